"""Testers: what runs the test at a commit. A small protocol and a registry by ``kind``.

The ``command`` tester (``command_tester.py``) runs a command in the worktree; a ``compass``
tester (jobs submitted to the CI scheduler) registers itself the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from common.errors import ValidationError
from consumer.engine.tester_types import Tester, TesterContext

__all__ = ["Tester", "TesterContext", "TesterFactory", "build_tester", "register_tester",
           "tester_fingerprint", "tester_kinds"]

# Fields that name or bound a profile without changing what a verdict means (and secrets,
# which must not even be hashed into a stored key).
_NOT_FINGERPRINTED = frozenset(
    {"name", "timeout", "my_account", "my_token", "poll_interval", "scheduler_url"}
)


TesterFactory = Callable[[Mapping[str, Any], TesterContext], Tester]

_REGISTRY: dict[str, TesterFactory] = {}


def register_tester(kind: str, factory: TesterFactory) -> None:
    """Make ``{"kind": kind, ...}`` profiles build testers with ``factory``."""
    _REGISTRY[kind] = factory


def tester_kinds() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def build_tester(profile: Mapping[str, Any], context: TesterContext) -> Tester:
    """A tester for ``profile``; :class:`ValidationError` on an unknown kind or a bad profile."""
    _load_builtin()
    kind = profile.get("kind")
    factory = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if factory is None:
        known = ", ".join(tester_kinds())
        raise ValidationError("tester.kind", f"unknown tester kind {kind!r} (known: {known})")
    return factory(profile, context)


def tester_fingerprint(profile: Mapping[str, Any]) -> str:
    """sha256 of the profile's canonical JSON without ``name`` and ``timeout``.

    Two profiles with the same fingerprint give verdicts that can be reused for each other.
    """
    essential = {k: v for k, v in profile.items() if k not in _NOT_FINGERPRINTED}
    canonical = json.dumps(essential, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _load_builtin() -> None:
    if "command" not in _REGISTRY:
        from consumer.engine import command_tester

        register_tester("command", command_tester.CommandTester.from_profile)
    if "compass" not in _REGISTRY:
        from consumer.engine import compass_tester

        register_tester("compass", compass_tester.CompassTester.from_profile)
