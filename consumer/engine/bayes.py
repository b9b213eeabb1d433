"""Bayesian bisection for flaky tests: a culprit probability per candidate commit.

Model: the culprit ``c`` is one commit of the range (uniform prior). A run at a commit
``x`` that is *after* ``c`` (``c`` an ancestor-or-self of ``x``) shows our error with an
unknown probability ``p``; a run at a commit before ``c`` shows it with a small
false-positive rate ``fp``. ``p`` has a Beta prior and is integrated out exactly: with
``K`` bad runs among ``N`` runs on commits after ``c``, the likelihood of ``c`` is
``B(a + K, b + N - K) / B(a, b) * fp^K' * (1 - fp)^(N' - K')`` (primes: the runs on
commits not after ``c``). So ``p`` is learnt from the runs themselves: a bad run is strong
evidence, a good run weak when ``p`` is low, and a skipped run (a different error, a
broken build) is no evidence at all. The prior is Beta(1, 2): flaky errors usually show in
fewer than half the runs, and assuming a lower rate makes good runs count for less, so the
confidence errs on the low side (honest) at the price of a few more runs.

Commits whose "after" sets of tested commits are equal have equal likelihood, so the
posterior is kept per *class* of candidates (bitsets in the DAG's topological order),
split whenever a commit is tested for the first time: the cost follows the number of
tested commits, not the size of the range.

Next commits: with one slot, the commit whose single run has the largest expected
information gain (mutual information between the run's outcome and the culprit), times
how likely it is to give a usable run at all (commits that keep being skipped are avoided);
with ``n`` slots, k-section: the commits where ``P(culprit is ancestor-or-self)`` is
nearest to ``i / (n + 1)``. A commit may be proposed again and again: repeated runs are
how weak evidence becomes strong.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Set
from dataclasses import dataclass

from consumer.engine.dag import Dag
from consumer.engine.search import SearchResult, SearchStatus
from consumer.engine.verdicts import Outcome, Verdict

FALSE_POSITIVE_RATE = 0.001
PRIOR_A = 1.0  # Beta(a, b) prior on the reproduction rate p
PRIOR_B = 2.0  # mean 1/3: conservative, see below
MAX_SKIPS = 6  # a commit skipped this often without one usable run is not proposed again
RUNNER_UP_MIN = 0.01  # a runner-up is reported when it is at least this likely
_NEGLIGIBLE = 1e-12


@dataclass(frozen=True)
class RunCounts:
    runs: int = 0  # usable runs (good or bad)
    bad_runs: int = 0
    skips: int = 0


@dataclass
class _Class:
    mask: int  # bitset over the DAG order
    size: int
    after: frozenset[str]  # tested commits every member is an ancestor-or-self of


def _entropy(q: float) -> float:
    if q <= 0.0 or q >= 1.0:
        return 0.0
    return -(q * math.log(q) + (1.0 - q) * math.log(1.0 - q))


def information_gain(after: float, p: float, fp: float = FALSE_POSITIVE_RATE) -> float:
    """Mutual information (nats) between one run's outcome and the culprit.

    ``after`` = P(the culprit is an ancestor-or-self of the tested commit); for a point
    estimate ``p`` of the reproduction rate it depends on nothing else.
    """
    q = after * p + (1.0 - after) * fp
    return _entropy(q) - after * _entropy(p) - (1.0 - after) * _entropy(fp)


def _lbeta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


class BayesianSearch:
    """A :class:`~consumer.engine.search.SearchStrategy` for flaky tests."""

    retests = True  # proposes commits that were already tested

    def __init__(
        self,
        dag: Dag,
        bad: str,
        *,
        confidence: float = 0.95,
        false_positive: float = FALSE_POSITIVE_RATE,
    ) -> None:
        if bad not in dag:
            raise ValueError(f"bad commit {bad} is not in the range")
        self._dag = dag
        self._bad = bad
        self._target = confidence
        self._fp = false_positive
        order = dag.order
        self._bit = {commit: 1 << i for i, commit in enumerate(order)}
        self._anc: dict[str, int] = {}
        for commit in reversed(order):  # parents first
            bits = self._bit[commit]
            for parent in dag.parents(commit):
                bits |= self._anc[parent]
            self._anc[commit] = bits
        self._candidates = self._anc[bad]
        self._order = [c for c in order if self._candidates & self._bit[c]]
        self._classes = [_Class(self._candidates, self._candidates.bit_count(), frozenset())]
        self._counts: dict[str, RunCounts] = {}
        self._post: list[float] = []
        self._dirty = True

    # -- evidence --------------------------------------------------------------------------

    def record(self, commit: str, outcome: Outcome) -> None:
        if commit not in self._anc or not self._candidates & self._bit[commit]:
            return  # outside the range (a good commit, the branch head): says nothing here
        old = self._counts.get(commit, RunCounts())
        if outcome.verdict is Verdict.SKIP and not outcome.bad_runs:
            self._counts[commit] = RunCounts(old.runs, old.bad_runs, old.skips + outcome.runs)
            return
        bad = outcome.bad_runs
        if outcome.verdict is Verdict.BAD and bad == 0:
            bad = outcome.runs
        runs = max(outcome.runs, bad)
        if runs == 0:
            return
        self._counts[commit] = RunCounts(old.runs + runs, old.bad_runs + bad, old.skips)
        if old.runs == 0:
            self._split(commit)
        self._dirty = True

    def __contains__(self, commit: object) -> bool:
        """Whether ``commit`` is a candidate of the range."""
        return isinstance(commit, str) and bool(self._candidates & self._bit.get(commit, 0))

    def counts(self, commit: str) -> RunCounts:
        return self._counts.get(commit, RunCounts())

    def _split(self, tested: str) -> None:
        anc = self._anc[tested]
        classes: list[_Class] = []
        for cls in self._classes:
            inside = cls.mask & anc
            outside = cls.mask & ~anc
            if inside:
                classes.append(_Class(inside, inside.bit_count(), cls.after | {tested}))
            if outside:
                classes.append(_Class(outside, outside.bit_count(), cls.after))
        self._classes = classes

    # -- posterior -------------------------------------------------------------------------

    def _posterior(self) -> list[float]:
        """Probability mass of each class (sums to 1)."""
        if not self._dirty:
            return self._post
        total_n = sum(c.runs for c in self._counts.values())
        total_k = sum(c.bad_runs for c in self._counts.values())
        log_fp, log_ok = math.log(self._fp), math.log1p(-self._fp)
        logs: list[float] = []
        for cls in self._classes:
            n = sum(self._counts[t].runs for t in cls.after)
            k = sum(self._counts[t].bad_runs for t in cls.after)
            n_before, k_before = total_n - n, total_k - k
            logs.append(
                math.log(cls.size)
                + _lbeta(PRIOR_A + k, PRIOR_B + n - k)
                - _lbeta(PRIOR_A, PRIOR_B)
                + k_before * log_fp
                + (n_before - k_before) * log_ok
            )
        top = max(logs)
        weights = [math.exp(v - top) for v in logs]
        norm = sum(weights)
        self._post = [w / norm for w in weights]
        self._dirty = False
        return self._post

    def reproduction_rate(self) -> float:
        """Posterior mean of ``p``, the rate at which the error shows after the culprit."""
        post = self._posterior()
        mean = 0.0
        for cls, mass in zip(self._classes, post, strict=True):
            n = sum(self._counts[t].runs for t in cls.after)
            k = sum(self._counts[t].bad_runs for t in cls.after)
            mean += mass * (PRIOR_A + k) / (PRIOR_A + PRIOR_B + n)
        return mean

    def probability(self, commit: str) -> float:
        """P(``commit`` is the first bad commit)."""
        bit = self._bit.get(commit, 0)
        for cls, mass in zip(self._classes, self._posterior(), strict=True):
            if cls.mask & bit:
                return mass / cls.size
        return 0.0

    def after_probability(self, commit: str) -> float:
        """P(the culprit is an ancestor-or-self of ``commit``): ``commit`` is bad."""
        anc = self._anc[commit]
        total = 0.0
        for cls, mass in zip(self._classes, self._posterior(), strict=True):
            if mass > _NEGLIGIBLE:
                shared = cls.mask & anc
                if shared:
                    total += mass * shared.bit_count() / cls.size
        return min(1.0, total)

    def ranked(self) -> list[tuple[str, float]]:
        """Candidates with their probabilities, most likely first (ties: newest first)."""
        per_commit: dict[str, float] = {}
        for cls, mass in zip(self._classes, self._posterior(), strict=True):
            share = mass / cls.size
            for commit in self._members(cls.mask):
                per_commit[commit] = share
        position = self._dag.position
        return sorted(per_commit.items(), key=lambda kv: (-kv[1], position(kv[0])))

    def _members(self, mask: int) -> list[str]:
        order = self._dag.order
        out: list[str] = []
        while mask:
            low = mask & -mask
            out.append(order[low.bit_length() - 1])
            mask ^= low
        return out

    def best(self) -> tuple[str, float]:
        mass, cls = max(
            ((m / c.size, c) for c, m in zip(self._classes, self._posterior(), strict=True)),
            key=lambda mc: mc[0],
        )
        members = self._members(cls.mask)
        return min(members, key=self._dag.position), mass

    def credible_set(self, level: float | None = None) -> list[str]:
        """The fewest most likely candidates whose probabilities add up to ``level``."""
        level = self._target if level is None else level
        chosen: list[str] = []
        total = 0.0
        for commit, prob in self.ranked():
            chosen.append(commit)
            total += prob
            if total >= level - 1e-12:
                break
        return chosen

    # -- the SearchStrategy protocol -------------------------------------------------------

    def candidates_left(self) -> int:
        return len(self.credible_set())

    def est_steps_left(self) -> int:
        if self._done():
            return 0
        entropy = -sum(
            mass * math.log(mass / cls.size)
            for cls, mass in zip(self._classes, self._posterior(), strict=True)
            if mass > 0
        )
        p = self.reproduction_rate()
        best_gain = max(information_gain(f / 100, p, self._fp) for f in range(1, 100))
        target = -math.log(max(1.0 - self._target, 1e-9))
        return max(1, math.ceil((entropy + target) / max(best_gain, 1e-3) / 2))

    def _done(self) -> bool:
        return self.best()[1] >= self._target

    def _selectable(self, pending: Set[str]) -> list[str]:
        out = []
        for commit in self._order:
            if commit in pending:
                continue
            counts = self._counts.get(commit)
            if counts is not None and counts.runs == 0 and counts.skips >= MAX_SKIPS:
                continue
            out.append(commit)
        return out

    def _testable(self, commit: str) -> float:
        counts = self._counts.get(commit, RunCounts())
        return (counts.runs + 2) / (counts.runs + counts.skips + 2)

    def next_commits(self, n: int, pending: Set[str] = frozenset()) -> list[str]:
        if n <= 0 or self._done():
            return []
        selectable = self._selectable(pending)
        if not selectable:
            return []
        after = {c: self.after_probability(c) for c in selectable}
        # Commits certainly after the culprit (or certainly before it) teach nothing.
        useful = [c for c in selectable if 1e-9 < after[c] < 1 - 1e-9]
        if not useful:
            return []
        position = self._dag.position
        if n == 1:
            p = self.reproduction_rate()
            best = max(
                useful,
                key=lambda c: (
                    self._testable(c) * information_gain(after[c], p, self._fp),
                    -position(c),
                ),
            )
            return [best]
        chosen: list[str] = []
        left = set(useful)
        for i in range(1, n + 1):
            if not left:
                break
            target = i / (n + 1)
            pick = min(
                left,
                key=lambda c: (abs(after[c] - target) / self._testable(c), position(c)),
            )
            chosen.append(pick)
            left.discard(pick)
        return chosen

    def result(self) -> SearchResult:
        commit, prob = self.best()
        if prob >= self._target:
            return SearchResult(SearchStatus.FOUND, commit, (commit,), confidence=prob)
        credible = tuple(self.credible_set())
        names = ", ".join(c[:12] for c in credible[:8])
        more = f" and {len(credible) - 8} more" if len(credible) > 8 else ""
        status = SearchStatus.UNFINISHED if self.next_commits(1) else SearchStatus.AMBIGUOUS
        reason = (
            f"the most likely first bad commit {commit[:12]} has probability {prob:.3f}, "
            f"below the target {self._target}; {len(credible)} candidate(s) hold "
            f"{self._target:.0%} of the probability: {names}{more}"
        )
        return SearchResult(status, None, credible, reason, confidence=prob)

    def runner_up(self, culprit: str) -> tuple[str, float] | None:
        """The second most likely commit, when it is at least :data:`RUNNER_UP_MIN` likely."""
        for commit, prob in self.ranked():
            if commit != culprit:
                return (commit, prob) if prob >= RUNNER_UP_MIN else None
        return None


def bayesian(confidence: float) -> Callable[[Dag, str], BayesianSearch]:
    """A :data:`~consumer.engine.search.StrategyFactory` with the given target."""

    def factory(dag: Dag, bad: str) -> BayesianSearch:
        return BayesianSearch(dag, bad, confidence=confidence)

    return factory
