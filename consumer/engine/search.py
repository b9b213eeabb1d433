"""The pure bisection search: which commit to test next, and what a verdict rules out.

No git and no I/O: a strategy works on a :class:`Dag` and verdicts, so it is tested on
synthetic histories. The engine loop only talks to the :class:`SearchStrategy` protocol, so
a probabilistic strategy (flaky tests: a culprit probability per candidate, several runs per
commit, k-section) can replace :class:`DeterministicSearch` without touching the loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Set
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from consumer.engine.dag import Dag
from consumer.engine.verdicts import Outcome, Verdict


class SearchStatus(StrEnum):
    FOUND = "found"  # one first bad commit
    AMBIGUOUS = "ambiguous"  # skipped commits leave several candidates
    UNFINISHED = "unfinished"  # stopped (budget) while commits were left to test
    INCONSISTENT = "inconsistent"  # verdicts contradict each other (flaky test?)


@dataclass(frozen=True)
class SearchResult:
    status: SearchStatus
    first_bad: str | None
    candidates: tuple[str, ...]
    reason: str | None = None
    confidence: float = 1.0


class SearchStrategy(Protocol):
    """What the engine loop needs from a search policy."""

    def next_commits(self, n: int, pending: Set[str] = frozenset()) -> list[str]:
        """Up to ``n`` commits to test now, none of them in ``pending`` (being tested)."""

    def record(self, commit: str, outcome: Outcome) -> None:
        """Apply what a test (or a reused verdict) said about ``commit``."""

    def candidates_left(self) -> int:
        """How many commits can still be the first bad one."""

    def est_steps_left(self) -> int:
        """A rough count of tests still needed, for progress reports."""

    def result(self) -> SearchResult:
        """The answer so far; ``UNFINISHED`` while commits are left to test."""


StrategyFactory = Callable[[Dag, str], SearchStrategy]

# How strongly a skipped commit makes its neighbours look untestable (see _skip_discount);
# 0.7 tested fewest commits over runs of 1-21 skips placed around a culprit.
_SKIP_RUN_Q = 0.7


class DeterministicSearch:
    """Git's bisection on a DAG, for tests whose verdict does not change between runs.

    Candidates are the ancestors-or-self of the current bad commit that are not ancestors of
    a good one. The next commit is the one that best halves them: for each candidate ``c``,
    ``w(c)`` = candidates that are ancestors-or-self of ``c``; the best maximises
    ``min(w, N - w)`` (git's rule; ties go to the newest). A skipped commit stays a
    candidate but is never proposed again; when only skipped commits are left besides the bad
    one, the answer is ambiguous among them.
    """

    def __init__(self, dag: Dag, bad: str) -> None:
        if bad not in dag:
            raise ValueError(f"bad commit {bad} is not in the range")
        self._dag = dag
        self._bad = bad
        self._candidates: set[str] = dag.ancestors(bad)
        self._verdicts: dict[str, Verdict] = {bad: Verdict.BAD}
        self._skipped: set[str] = set()
        self._inconsistent: str | None = None

    @property
    def bad(self) -> str:
        return self._bad

    @property
    def inconsistent(self) -> bool:
        """Whether the verdicts contradict each other (cheap: no result is built)."""
        return self._inconsistent is not None

    @property
    def candidates(self) -> frozenset[str]:
        return frozenset(self._candidates)

    def candidates_left(self) -> int:
        return len(self._candidates)

    def est_steps_left(self) -> int:
        unknown = len(self._selectable(frozenset()))
        return 0 if unknown == 0 else math.ceil(math.log2(len(self._candidates)))

    def record(self, commit: str, outcome: Outcome) -> None:
        verdict = outcome.verdict
        self._verdicts.setdefault(commit, verdict)
        if commit not in self._dag:
            return  # outside the range: nothing it rules in or out here
        if verdict is Verdict.SKIP:
            self._skipped.add(commit)
        elif verdict is Verdict.GOOD:
            ruled_out = self._dag.ancestors(commit)
            if self._bad in ruled_out:
                self._inconsistent = (
                    f"commit {commit} was judged good but descends from bad commit {self._bad}"
                    " (flaky test or a fix and regression in between?)"
                )
                return
            self._candidates -= ruled_out
        elif commit in self._candidates:
            self._bad = commit
            self._candidates &= self._dag.ancestors(commit)
        # A bad commit outside the candidates adds nothing (git keeps one bad commit too).

    def next_commits(self, n: int, pending: Set[str] = frozenset()) -> list[str]:
        if n <= 0 or self._inconsistent:
            return []
        selectable = self._selectable(pending)
        if not selectable:
            return []
        weights = self._dag.ancestor_weights(self._candidates)
        total = len(self._candidates)
        position = self._dag.position
        if n == 1:
            testable = self._skip_discount(selectable, weights)
            best = max(
                selectable,
                key=lambda c: (testable[c] * min(weights[c], total - weights[c]), -position(c)),
            )
            return [best]
        # k-section: the commits whose weights are nearest to total * i / (n + 1).
        chosen: list[str] = []
        left = set(selectable)
        for i in range(1, n + 1):
            if not left:
                break
            target = total * i / (n + 1)
            pick = min(left, key=lambda c: (abs(weights[c] - target), position(c)))
            chosen.append(pick)
            left.discard(pick)
        return chosen

    def _skip_discount(self, selectable: set[str], weights: dict[str, int]) -> dict[str, float]:
        """How likely each commit is to be testable, judging by the skipped candidates.

        Untestable commits come in runs (a build broken for a while): a commit ``d`` (in
        weight) above the nearest skipped one below it, and ``e`` below the nearest above it,
        is taken to be testable with probability ``(1 - q**d) * (1 - q**e)`` (a missing side
        counts 1), and the search maximises that times the split. Between two skipped commits
        that is small, so the search leaves a run of skips early. Without skips it is 1 and
        the choice is exactly git's. (Git jumps a pseudo-random distance for the same aim.)
        """
        skipped = [weights[c] for c in self._skipped if c in self._candidates]
        if not skipped:
            return dict.fromkeys(selectable, 1.0)
        testable: dict[str, float] = {}
        for commit in selectable:
            w = weights[commit]
            below = [w - s for s in skipped if s < w]
            above = [s - w for s in skipped if s > w]
            p = 1.0 - _SKIP_RUN_Q ** min(below) if below else 1.0
            p *= 1.0 - _SKIP_RUN_Q ** min(above) if above else 1.0
            testable[commit] = p
        return testable

    def _selectable(self, pending: Set[str]) -> set[str]:
        return {
            c
            for c in self._candidates
            if c not in self._verdicts and c not in pending
        }

    def result(self) -> SearchResult:
        ordered = tuple(c for c in self._dag.order if c in self._candidates)
        if self._inconsistent:
            return SearchResult(
                SearchStatus.INCONSISTENT, None, ordered, self._inconsistent, confidence=0.0
            )
        untested = self._selectable(frozenset())
        if untested:
            return SearchResult(
                SearchStatus.UNFINISHED,
                None,
                ordered,
                f"{len(untested)} of {len(ordered)} candidates not tested yet",
                confidence=0.0,
            )
        skipped = [c for c in ordered if c in self._skipped]
        if not skipped:
            return SearchResult(SearchStatus.FOUND, self._bad, (self._bad,))
        names = ", ".join(c[:12] for c in skipped)
        return SearchResult(
            SearchStatus.AMBIGUOUS,
            None,
            ordered,
            f"{len(skipped)} commit(s) could not be tested (skip): {names}; the first bad commit"
            f" is one of these {len(ordered)} candidates (the skipped ones or {self._bad[:12]})",
            confidence=1.0 / len(ordered),
        )


def deterministic(dag: Dag, bad: str) -> SearchStrategy:
    """The default :data:`StrategyFactory`."""
    return DeterministicSearch(dag, bad)
