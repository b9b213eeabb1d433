"""The types every tester shares: its context and the protocol it implements.

Kept apart from the registry (:mod:`consumer.engine.testers`), which imports the built-in
testers: a tester imports this module and nothing that imports it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from consumer.engine.verdicts import DifferentErrorPolicy, Outcome


@dataclass(frozen=True)
class TesterContext:
    """What every tester needs to know about the task besides its own profile."""

    __test__ = False  # not a pytest test class, despite the name

    error_id: str | None
    different_error: DifferentErrorPolicy = DifferentErrorPolicy.SKIP
    task_id: int | None = None
    bad_job_id: str | None = None
    db_url: str | None = None  # the jobs table (compass tester)
    scheduler_url: str | None = None  # compass-ci's scheduler (compass tester)
    repo_url: str | None = None


class Tester(Protocol):
    """Tests one commit; ``worktree`` holds a checkout of it (a remote tester may ignore it)."""

    async def test(self, commit: str, worktree: Path) -> Outcome: ...
