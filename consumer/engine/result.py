"""The final answer of a bisection, its ``result`` event and its exit code."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from consumer.engine.events import RESULT, Event, make_event


class Status(StrEnum):
    FOUND = "found"
    AMBIGUOUS = "ambiguous"
    NOT_REPRODUCED = "not_reproduced"
    NO_GOOD = "no_good"
    GOOD_IS_BAD = "good_is_bad"  # the good commit shows the error: the regression is older
    UNDECIDED = "undecided"  # the runs cannot tell (within the run budget)
    ERROR = "error"


class ExitCode(IntEnum):
    FOUND = 0
    NO_RESULT = 1
    ERROR = 2


@dataclass(frozen=True)
class Verification:
    held: bool
    detail: str
    runs: int = 0


@dataclass(frozen=True)
class TestedCommit:
    commit: str
    verdict: str
    phase: str
    reused: bool = False


@dataclass(frozen=True)
class RunnerUp:
    commit: str
    probability: float


@dataclass(frozen=True)
class ErrorRates:
    """The estimated rates of our error: ``bad`` after the first bad commit, ``good``
    before it (posterior means)."""

    bad: float
    good: float
    # found: the usable runs they rest on, after the culprit and before it, and how many of
    # each showed the error (a deterministic test: 12 of 12 and 0 of 9, while the
    # estimates, posterior means, stay short of 100 % and 0 %)
    after_runs: int | None = None
    after_bad: int | None = None
    before_runs: int | None = None
    before_bad: int | None = None


@dataclass(frozen=True)
class HeadCheck:
    """The branch head tested after the culprit was found."""

    commit: str
    status: str  # "regressed" | "fixed" | "unknown"
    runs: int = 0


@dataclass(frozen=True)
class BisectResult:
    status: Status
    first_bad_commit: str | None = None
    subject: str | None = None
    author: str | None = None
    date: str | None = None
    candidates: tuple[str, ...] = ()
    tested: tuple[TestedCommit, ...] = ()
    verification: Verification | None = None
    confidence: float = 0.0
    runs: int = 0
    reason: str | None = None
    first_bad_job_id: str | None = None
    first_result_root: str | None = None
    good_commits: tuple[str, ...] = field(default=())
    runner_up: RunnerUp | None = None
    head: HeadCheck | None = None
    strategy: str = "adaptive"  # "deterministic" (limits.flaky = false) or a custom one
    rates: ErrorRates | None = None

    @property
    def exit_code(self) -> ExitCode:
        if self.status is Status.FOUND:
            return ExitCode.FOUND
        if self.status is Status.ERROR:
            return ExitCode.ERROR
        return ExitCode.NO_RESULT

    def to_event(self) -> Event:
        fields: dict[str, Any] = {
            "status": self.status.value,
            "first_bad_commit": self.first_bad_commit,
            "subject": self.subject,
            "author": self.author,
            "date": self.date,
            "candidates": list(self.candidates),
            "tested": [asdict(t) for t in self.tested],
            "verification": asdict(self.verification) if self.verification else None,
            "confidence": self.confidence,
            "runner_up": asdict(self.runner_up) if self.runner_up else None,
            "runs": self.runs,
            "reason": self.reason,
            "first_bad_job_id": self.first_bad_job_id,
            "first_result_root": self.first_result_root,
            "good_commits": list(self.good_commits),
            "head": asdict(self.head) if self.head else None,
            "strategy": self.strategy,
            "rates": asdict(self.rates) if self.rates else None,
        }
        return make_event(RESULT, **fields)


def error_result(reason: str, **fields: Any) -> BisectResult:
    return BisectResult(status=Status.ERROR, reason=reason, **fields)
