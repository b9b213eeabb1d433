"""Tester profiles: how this consumer tests a commit, by name.

A task names its tester (``task.tester``); the consumer looks the name up here and hands the
profile to the engine as the spec's ``tester`` object. Profiles come from
``BISECT_TESTERS_FILE`` and/or ``BISECT_TESTERS`` (the same JSON inline, which wins on a
name clash); a built-in ``compass`` profile is always there unless one of them redefines it.
The names are what the consumer advertises in its claims.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.errors import ConfigError
from consumer.engine.spec import MAX_REPRODUCE_RUNS
from consumer.engine.testers import tester_fingerprint as engine_fingerprint

COMPASS = "compass"
KINDS = frozenset({"command", "compass"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
# Keys that are about this consumer, not about how a commit is judged.
_CONSUMER_KEYS = frozenset({"slots", "run_budget", "reproduce_runs"})


@dataclass(frozen=True)
class TesterProfile:
    """One named tester; ``options`` holds the engine's tester fields except ``name``."""

    name: str
    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)
    slots: int | None = None
    # The most test runs one bisection may spend with this tester: the default when a task
    # asks for none, the cap when it asks for more (each run is a job on the site's CI).
    run_budget: int | None = None
    # Runs of the bad commit without the error before "not reproduced" (the engine's
    # limits.reproduce_runs): raise it where errors show in well under 30 % of runs.
    reproduce_runs: int | None = None

    def tester_spec(self) -> dict[str, Any]:
        """The ``tester`` object of the engine spec."""
        return {**self.options, "kind": self.kind, "name": self.name}


BUILTIN = TesterProfile(name=COMPASS, kind="compass", options={})


def _validate(name: str, raw: Any, variable: str) -> TesterProfile:
    where = f"{variable}: tester {name!r}"
    if not _NAME.match(name):
        raise ConfigError(f"{variable}: tester name {name!r} must be 1-64 letters, digits, "
                          "'_', '.' or '-'")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected an object, got {type(raw).__name__}")
    kind = raw.get("kind", "command")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {sorted(KINDS)}, got {kind!r}")
    command = raw.get("command")
    if kind == "command":
        if isinstance(command, str):
            if not command.strip():
                raise ConfigError(f"{where}: command is empty")
        elif isinstance(command, list):
            if not command or not all(isinstance(a, str) for a in command):
                raise ConfigError(f"{where}: command must be a non-empty list of strings "
                                  "or a shell string")
        else:
            raise ConfigError(f"{where}: kind command needs a command (list or string)")
    timeout = raw.get("timeout")
    if timeout is not None and (isinstance(timeout, bool)
                                or not isinstance(timeout, int | float) or timeout <= 0):
        raise ConfigError(f"{where}: timeout must be a positive number of seconds")
    regex = raw.get("errid_regex")
    if regex is not None:
        if not isinstance(regex, str):
            raise ConfigError(f"{where}: errid_regex must be a string")
        try:
            compiled = re.compile(regex)
        except re.error as exc:
            raise ConfigError(f"{where}: errid_regex does not compile ({exc})") from None
        if compiled.groups > 1:
            raise ConfigError(f"{where}: errid_regex must have at most one group")
    workdir = raw.get("workdir")
    if workdir is not None and not isinstance(workdir, str):
        raise ConfigError(f"{where}: workdir must be a string")
    env = raw.get("env")
    if env is not None and (not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise ConfigError(f"{where}: env must map strings to strings")
    network = raw.get("network")
    if network is not None and not isinstance(network, bool):
        raise ConfigError(f"{where}: network must be true or false")
    base_dir = raw.get("base_dir")
    if base_dir is not None and (not isinstance(base_dir, str) or not base_dir.startswith("/")):
        raise ConfigError(f"{where}: base_dir must be an absolute path")
    slots = raw.get("slots")
    if slots is not None and (isinstance(slots, bool) or not isinstance(slots, int)
                              or slots < 1):
        raise ConfigError(f"{where}: slots must be a positive integer")
    run_budget = raw.get("run_budget")
    if run_budget is not None and (isinstance(run_budget, bool) or not isinstance(run_budget, int)
                                   or run_budget < 1):
        raise ConfigError(f"{where}: run_budget must be a positive integer")
    reproduce_runs = raw.get("reproduce_runs")
    if reproduce_runs is not None and (
            isinstance(reproduce_runs, bool) or not isinstance(reproduce_runs, int)
            or not 1 <= reproduce_runs <= MAX_REPRODUCE_RUNS):
        raise ConfigError(f"{where}: reproduce_runs must be an integer between 1 and "
                          f"{MAX_REPRODUCE_RUNS}")
    options = {k: v for k, v in raw.items() if k not in _CONSUMER_KEYS and k != "name"}
    options["kind"] = kind
    return TesterProfile(name=name, kind=kind, options=options, slots=slots,
                         run_budget=run_budget, reproduce_runs=reproduce_runs)


def parse_profiles(text: str, variable: str) -> dict[str, TesterProfile]:
    """Profiles from one JSON document ``{"name": {...}, ...}``."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{variable}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{variable}: expected a JSON object of named testers")
    return {str(name): _validate(str(name), raw, variable) for name, raw in data.items()}


def load_profiles(*, inline: str | None, path: str | None,
                  inline_variable: str = "BISECT_TESTERS",
                  file_variable: str = "BISECT_TESTERS_FILE") -> dict[str, TesterProfile]:
    """The built-in profile, then the file's, then the inline ones (later wins)."""
    profiles = {COMPASS: BUILTIN}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise ConfigError(f"{file_variable}: cannot read {path!r} ({exc.strerror})") from None
        profiles.update(parse_profiles(text, file_variable))
    if inline is not None:
        profiles.update(parse_profiles(inline, inline_variable))
    return profiles


def tester_fingerprint(tester: Mapping[str, Any]) -> str:
    """The fingerprint the engine puts on its verdicts, so stored verdicts are found again.

    One definition, the engine's (``consumer.engine.testers.tester_fingerprint``).
    """
    return engine_fingerprint(dict(tester))
