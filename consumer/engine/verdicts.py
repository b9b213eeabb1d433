"""Verdicts and the rule that turns one test run into a verdict.

The rule is about the *same* error: a commit is bad when the task's error id shows, good when
the test ran to the end without it, and skipped when the test could not judge the commit.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

SKIP_EXIT_CODE = 125  # git bisect run's "cannot test this commit"


class Verdict(StrEnum):
    GOOD = "good"
    BAD = "bad"
    SKIP = "skip"


class DifferentErrorPolicy(StrEnum):
    """What a failure showing other error ids, but not ours, counts as.

    ``skip`` (the default) because a different failure can mask ours: the commit may well
    contain our regression behind an earlier, unrelated breakage.
    """

    SKIP = "skip"
    GOOD = "good"


@dataclass(frozen=True)
class Outcome:
    """What a tester learned about one commit (possibly over several runs)."""

    verdict: Verdict
    runs: int = 1
    bad_runs: int = 0
    errids_seen: frozenset[str] = frozenset()
    duration_s: float = 0.0
    job_id: str | None = None
    result_root: str | None = None
    detail: str = ""
    reused: bool = False  # the tester reused an existing result (a finished CI job): no new run

    @classmethod
    def of(cls, verdict: Verdict, *, runs: int = 1, detail: str = "") -> Outcome:
        """An outcome with only a verdict, as known verdicts and unit tests need."""
        return cls(
            verdict=verdict,
            runs=runs,
            bad_runs=runs if verdict is Verdict.BAD else 0,
            detail=detail,
        )


def classify(
    *,
    exit_code: int | None,
    timed_out: bool,
    error_id: str | None,
    errids_seen: Collection[str],
    different_error: DifferentErrorPolicy = DifferentErrorPolicy.SKIP,
) -> tuple[Verdict, str]:
    """Judge one run; returns the verdict and a short reason.

    With an ``error_id`` (checked in this order):
    exit 125 -> skip; our id seen -> bad (even on timeout: the error did show);
    timeout -> skip; exit 0 -> good; killed by a signal or exit >= 128 -> skip;
    any other failure (other ids or none) -> "different error", judged by ``different_error``.

    Without one, exit codes decide as in ``git bisect run``: 0 good, 125 skip,
    1..127 bad, timeout / signal / >= 128 skip.
    """
    if exit_code == SKIP_EXIT_CODE:
        return Verdict.SKIP, "exit 125: the test cannot judge this commit"
    if error_id is not None and error_id in errids_seen:
        return Verdict.BAD, f"error {error_id} seen"
    if timed_out or exit_code is None:
        return Verdict.SKIP, "timed out"
    if exit_code == 0:
        return Verdict.GOOD, "exit 0" + ("" if error_id is None else f" without {error_id}")
    if exit_code < 0 or exit_code >= 128:
        return Verdict.SKIP, f"test crashed or was killed (exit {exit_code})"
    if error_id is None:
        return Verdict.BAD, f"exit {exit_code}"
    others = ", ".join(sorted(errids_seen)[:5]) or "no error id"
    reason = f"different error (exit {exit_code}, {others}) counts as {different_error.value}"
    if different_error is DifferentErrorPolicy.GOOD:
        return Verdict.GOOD, reason
    return Verdict.SKIP, reason
