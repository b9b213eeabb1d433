from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from common.errors import ValidationError
from consumer.engine import testers
from consumer.engine.command_tester import CommandProfile, CommandTester
from consumer.engine.testers import build_tester, register_tester
from consumer.engine.verdicts import Outcome, Verdict

CTX = testers.TesterContext(error_id="E1")


def test_fingerprint_ignores_name_and_timeout_only() -> None:
    base = {"kind": "command", "command": ["make", "test"], "name": "a", "timeout": 10}
    fingerprint = testers.tester_fingerprint
    assert fingerprint(base) == fingerprint({**base, "name": "b", "timeout": 99})
    assert fingerprint(base) != fingerprint({**base, "command": ["make"]})
    assert len(fingerprint(base)) == 64


def test_command_profile_is_built_by_kind() -> None:
    tester = build_tester({"kind": "command", "command": "make test", "timeout": 5}, CTX)
    assert isinstance(tester, CommandTester)
    assert tester.profile.argv() == ["/bin/sh", "-c", "make test"]
    assert tester.profile.timeout == 5.0


@pytest.mark.parametrize(
    ("profile", "field"),
    [
        ({"kind": "nope"}, "tester.kind"),
        ({"kind": "command"}, "tester.command"),
        ({"kind": "command", "command": []}, "tester.command"),
        ({"kind": "command", "command": "x", "workdir": "/abs"}, "tester.workdir"),
        ({"kind": "command", "command": "x", "workdir": "../up"}, "tester.workdir"),
        ({"kind": "command", "command": "x", "timeout": -1}, "tester.timeout"),
        ({"kind": "command", "command": "x", "errid_regex": "("}, "tester.errid_regex"),
        ({"kind": "command", "command": "x", "errid_regex": "(a)(b)"}, "tester.errid_regex"),
        ({"kind": "command", "command": "x", "env": {"A": 1}}, "tester.env"),
    ],
)
def test_bad_profiles(profile: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        build_tester(profile, CTX)
    assert caught.value.field == field


class _Remote:
    def __init__(self, profile: Mapping[str, Any], context: testers.TesterContext) -> None:
        self.queue = profile["queue"]

    async def test(self, commit: str, worktree: Path) -> Outcome:
        return Outcome(verdict=Verdict.GOOD, job_id=f"{self.queue}-{commit}")


async def test_registry_is_open_for_other_kinds() -> None:
    register_tester("fake-remote", _Remote)
    tester: testers.Tester = build_tester({"kind": "fake-remote", "queue": "q"}, CTX)
    outcome = await tester.test("abc", Path("."))
    assert outcome.job_id == "q-abc"


def test_profile_defaults() -> None:
    profile = CommandProfile.from_mapping({"command": ["./t"]})
    assert profile.workdir == "." and profile.errid_regex.startswith("ERRID")
