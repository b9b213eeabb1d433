"""Small rules for flaky tests around the Bayesian search: run tallies, how many good runs
make a good verdict believable, the head check's answer, and the posterior verification."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from consumer.engine.bayes import PRIOR_A, PRIOR_B, BayesianSearch
from consumer.engine.result import Verification
from consumer.engine.verdicts import Outcome, Verdict

REPRODUCE_TRIES = 30  # runs of the bad commit, in flaky mode, before "not reproduced"...
REPRODUCE_USABLE = 20  # ...or this many usable (good) runs: 0.7^20 < 0.1 %
CONFIRM_TRIES = 12  # runs of a candidate good commit (find_good) or of the branch head
HEAD_REGRESSED = "regressed"
HEAD_FIXED = "fixed"
HEAD_UNKNOWN = "unknown"


@dataclass(frozen=True)
class Tally:
    """Every run of one commit: usable runs (good or bad), bad runs, skipped runs."""

    runs: int = 0
    bad_runs: int = 0
    skips: int = 0

    def add(self, outcome: Outcome) -> Tally:
        if outcome.verdict is Verdict.SKIP and not outcome.bad_runs:
            return Tally(self.runs, self.bad_runs, self.skips + outcome.runs)
        bad = outcome.bad_runs or (outcome.runs if outcome.verdict is Verdict.BAD else 0)
        return Tally(self.runs + max(outcome.runs, bad), self.bad_runs + bad, self.skips)

    def merge(self, other: Tally | None) -> Tally:
        if other is None:
            return self
        return Tally(self.runs + other.runs, self.bad_runs + other.bad_runs,
                     self.skips + other.skips)

    @property
    def verdict(self) -> Verdict:
        """Bad when the error showed at all, good when only good runs, else skip."""
        if self.bad_runs:
            return Verdict.BAD
        return Verdict.GOOD if self.runs else Verdict.SKIP

    def rate_estimate(self) -> float:
        """Posterior mean of the reproduction rate, taking this commit as bad."""
        return (PRIOR_A + self.bad_runs) / (PRIOR_A + PRIOR_B + self.runs)


def good_runs_needed(rate: float, confidence: float) -> int:
    """Good runs in a row after which "the error would have shown" holds at ``confidence``."""
    rate = min(max(rate, 0.05), 1.0)
    if rate >= 1.0:
        return 1
    needed = math.log(max(1.0 - confidence, 1e-9)) / math.log(1.0 - rate)
    return max(1, min(CONFIRM_TRIES, math.ceil(needed)))


def head_status(tally: Tally, needed: int, attempts: int) -> str | None:
    """The head check's answer so far, or None to run again."""
    if tally.bad_runs:
        return HEAD_REGRESSED
    if tally.runs >= needed:
        return HEAD_FIXED
    if attempts >= CONFIRM_TRIES or (needed == 1 and tally.skips >= 3):
        return HEAD_UNKNOWN
    return None


def posterior_verification(
    search: BayesianSearch, culprit: str, parents: Sequence[str]
) -> Verification:
    """The boundary as the runs show it: no parent of the culprit was ever bad.

    No new runs, and the confidence is not cut when it does not hold: the posterior already
    weighs every run on both sides. The culprit itself need not have been tested: in a DAG,
    bad runs on two branches that meet only there can name it.
    """
    counts = search.counts(culprit)
    held = True
    notes = [f"culprit {culprit[:12]} bad in {counts.bad_runs} of {counts.runs} runs"]
    for parent in parents:
        pc = search.counts(parent)
        if parent not in search:
            notes.append(f"parent {parent[:12]} is a good commit of the range")
            continue
        held = held and pc.bad_runs == 0
        notes.append(f"parent {parent[:12]} bad in {pc.bad_runs} of {pc.runs} runs")
    if not parents:
        notes.append("root commit: no parent to test")
    notes.append(f"posterior {search.probability(culprit):.3f}, "
                 f"reproduction rate ~{search.reproduction_rate():.2f}")
    return Verification(held=held, detail="; ".join(notes), runs=0)
