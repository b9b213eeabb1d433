"""A fast simulation of the default search: no git, no processes.

The bad-commit check, the search, the verification and the stopping rules are those of
the engine (:mod:`consumer.engine.adaptive`); only the test is simulated: a run at commit
``i`` of a range ``0..n-1`` (``n - 1`` the bad commit, the good commit outside the range)
ends in an unrelated error with probability ``noise`` (a skip), is skipped at an
untestable commit, and otherwise shows our error with probability ``p`` when the culprit
is an ancestor-or-self of ``i`` and ``q`` otherwise. ``culprit = -1`` makes the good commit
itself bad.

The history is linear (commit ``i``'s parent is ``i - 1``, the good commit before ``0``)
or, with ``merges``, the merge-heavy history of :func:`consumer.engine.synthetic.plan_history`
(side branches forked and merged back; indices in creation order, every commit an ancestor
of the bad one, the good commit its root).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from consumer.engine.adaptive import (
    FOUND,
    GOOD_IS_BAD,
    AdaptiveSearch,
    Decision,
    reproduced,
    usable_counts,
)
from consumer.engine.changepoint import GOOD_SIDE, ChangePoint
from consumer.engine.dag import Dag
from consumer.engine.range_finder import ONE_RUN_TRIES
from consumer.engine.search import DeterministicSearch, SearchStatus
from consumer.engine.spec import (
    DEFAULT_CONFIDENCE,
    DEFAULT_DETERMINISTIC_RUN_BUDGET,
    DEFAULT_REPRODUCE_RUNS,
    DEFAULT_RUN_BUDGET,
)
from consumer.engine.synthetic import plan_history
from consumer.engine.verdicts import Outcome, Verdict

GOOD = "good"


@dataclass(frozen=True)
class Scenario:
    n: int  # commits in the range (the bad one included, the good one not)
    culprit: int  # index of the first bad commit; -1: the good commit is bad too
    p: float  # P(the error shows) at a commit at or after the culprit
    q: float  # P(the error shows) before it
    noise: float = 0.0  # P(an unrelated error): the run is a skip
    untestable: frozenset[int] = frozenset()  # commits whose runs always skip
    merges: int = 0  # side branches merged back (0: a linear history)
    history_seed: int = 0  # which merge-heavy history (with merges)
    # Failures in bursts, as on a CI whose test machine or network goes bad for a while:
    # before each run a burst starts with this probability, and then this many runs in a
    # row show the error whatever the commit.
    burst_start: float = 0.0
    burst_runs: int = 0


@dataclass(frozen=True)
class Trial:
    status: str  # found, good_is_bad, undecided, ambiguous, not_reproduced
    answer: int | None  # the culprit's index (found), -1 for good_is_bad
    confidence: float
    runs: int
    right: bool  # a found culprit or good_is_bad that is the truth


def name(i: int) -> str:
    return GOOD if i < 0 else f"c{i}"


@lru_cache(maxsize=8)
def linear_dag(n: int) -> Dag:
    return Dag({name(i): (name(i - 1),) for i in range(n)})


@lru_cache(maxsize=8)
def merge_history(n: int, merges: int, seed: int) -> tuple[tuple[tuple[int, ...], ...],
                                                            tuple[int, ...]]:
    """Parents of commits ``0..n-1`` (-1: the good commit) and each commit's ancestors-or-
    self as a bitset (bit ``i`` for commit ``i``)."""
    planned = plan_history(n + 1, merges, seed)  # index 0 is the good commit
    parents = tuple(tuple(j - 1 for j in ps) for ps in planned[1:])
    ancestors: list[int] = []
    for i, ps in enumerate(parents):
        bits = 1 << i
        for j in ps:
            if j >= 0:
                bits |= ancestors[j]
        ancestors.append(bits)
    return parents, tuple(ancestors)


def history(s: Scenario) -> tuple[Dag, Callable[[int], bool]]:
    """The range's DAG, and whether a commit is after the culprit (the culprit an
    ancestor-or-self of it)."""
    if not s.merges:
        return linear_dag(s.n), lambda i: i >= s.culprit
    _, ancestors = merge_history(s.n, s.merges, s.history_seed)
    dag = merge_dag(s.n, s.merges, s.history_seed)
    if s.culprit < 0:
        return dag, lambda i: True
    return dag, lambda i: i >= 0 and bool(ancestors[i] >> s.culprit & 1)  # -1: the good commit


@lru_cache(maxsize=8)
def merge_dag(n: int, merges: int, seed: int) -> Dag:
    parents, _ = merge_history(n, merges, seed)
    return Dag({name(i): tuple(name(j) for j in parents[i]) for i in range(n)})


def run_trial(s: Scenario, seed: int, *, confidence: float = DEFAULT_CONFIDENCE,
              budget: int = DEFAULT_RUN_BUDGET, reproduce_runs: int = DEFAULT_REPRODUCE_RUNS,
              trace: Callable[[str], None] | None = None) -> Trial:
    """One simulated bisection; ``trace`` gets a line per run (for debugging)."""
    dag, is_after = history(s)
    run = _test(s, is_after, random.Random(seed))
    bad = s.n - 1
    check: list[Outcome] = []
    usable = bad_runs = 0
    while (state := reproduced(usable, bad_runs, len(check), reproduce_runs)) is None:
        outcome = run(bad)
        check.append(outcome)
        usable += outcome.verdict is not Verdict.SKIP
        bad_runs += outcome.verdict is Verdict.BAD
    if not state:
        return Trial("not_reproduced", None, 0.0, len(check), False)
    search = AdaptiveSearch(dag, name(bad), [GOOD], confidence=confidence)
    for outcome in check:
        search.record(name(bad), outcome)
    index = {name(i): i for i in range(-1, s.n)}
    while True:
        decision = search.decision(runs_used=search.runs, budget=budget)
        if decision is not None:
            break
        picks = search.next_picks(1)
        if not picks:
            decision = search.decision(runs_used=search.runs, budget=budget, exhausted=True)
            assert decision is not None
            break
        outcome = run(index[picks[0].commit])
        if trace is not None:
            rates = search.model.rates()
            best, prob = search.model.best()
            after = search.model.after_probability(picks[0].commit)
            trace(f"{search.runs:>4} {picks[0].phase:<6} {picks[0].commit:>6} "
                  f"{outcome.verdict.value:<4} after={after:.3f} "
                  f"p={rates.bad:.3f} q={rates.good:.3f} best={best} {prob:.3f}")
        search.record(picks[0].commit, outcome, phase=picks[0].phase)
    return _trial(decision, s, search.runs, index)


def _test(s: Scenario, is_after: Callable[[int], bool], rng: random.Random
          ) -> Callable[[int], Outcome]:
    """One run of the simulated test at commit ``i``."""
    burst_left = 0

    def run(i: int) -> Outcome:
        nonlocal burst_left
        if s.burst_runs and not burst_left and rng.random() < s.burst_start:
            burst_left = s.burst_runs
        if burst_left:
            burst_left -= 1
            return Outcome.of(Verdict.BAD)
        if rng.random() < s.noise or i in s.untestable:
            return Outcome.of(Verdict.SKIP)
        shows = rng.random() < (s.p if is_after(i) else s.q)
        return Outcome.of(Verdict.BAD if shows else Verdict.GOOD)

    return run


def run_git_trial(s: Scenario, seed: int, *, budget: int = DEFAULT_DETERMINISTIC_RUN_BUDGET,
                  verify: bool = True) -> Trial:
    """One simulated bisection by git's search (``limits.flaky`` false, ``--no-flaky``), as
    the engine runs it: one run of the bad commit, git's halving (a commit run once, a skip
    never retried, a contradiction ending ``ambiguous``), then one fresh run of the culprit
    and of each parent (the check and the retests repeated while they skip, up to
    :data:`~consumer.engine.range_finder.ONE_RUN_TRIES` times). The confidence is the
    default model's posterior over every run (:func:`consumer.engine.conclusion.
    runs_posterior`), cut to 0.5 when the retests contradict the boundary. A retest of the
    good commit that shows the error ends ``good_is_bad`` (the engine steps back to older
    commits, which the simulation has not). What it costs to declare a flaky test
    deterministic."""
    dag, is_after = history(s)
    run = _test(s, is_after, random.Random(seed))
    index = {name(i): i for i in range(-1, s.n)}
    bad = name(s.n - 1)
    model = ChangePoint(dag, bad, [GOOD])
    runs = 0

    def test(commit: str, tries: int = 1) -> Outcome:
        """``tries`` > 1: repeated while it skips (range_finder.usable_run)."""
        nonlocal runs
        for _ in range(tries):
            runs += 1
            outcome = run(index[commit])
            model.record(commit, *usable_counts(outcome))
            if outcome.verdict is not Verdict.SKIP:
                break
        return outcome

    if test(bad, ONE_RUN_TRIES).verdict is not Verdict.BAD:
        return Trial("not_reproduced", None, 0.0, runs, False)
    search = DeterministicSearch(dag, bad)
    while runs < budget and (picks := search.next_commits(1)):
        search.record(picks[0], test(picks[0]))
    found = search.result()
    if found.status is not SearchStatus.FOUND or found.first_bad is None:
        return Trial("ambiguous", None, 0.0, runs, False)
    culprit = found.first_bad
    held = True
    if verify:
        held = test(culprit, ONE_RUN_TRIES).verdict is Verdict.BAD
        for parent in dag.all_parents(culprit):  # the good commit too, for the oldest
            verdict = test(parent, ONE_RUN_TRIES).verdict
            if verdict is Verdict.BAD and parent == GOOD:
                # The good commit showed the error: the engine steps back to older commits,
                # which this range has not; their search is counted as this answer.
                good_side = Decision(GOOD_IS_BAD, None, model.probability(GOOD_SIDE), (), None,
                                     model.rates())
                return _trial(good_side, s, runs, index)
            held = held and verdict is Verdict.GOOD
    confidence = model.probability(culprit) if held else min(model.probability(culprit), 0.5)
    decision = Decision(FOUND, culprit, confidence, (culprit,), None, model.rates())
    return _trial(decision, s, runs, index)



def _trial(d: Decision, s: Scenario, runs: int, index: dict[str, int]) -> Trial:
    """``right``: the true culprit named (or the good commit said bad when it is); with
    ``p <= q`` there is no change to find, and naming no commit is right."""
    if s.p <= s.q:
        return Trial(d.status, None, d.confidence, runs, d.status in ("undecided",
                                                                      "good_is_bad"))
    if d.status == "found" and d.commit is not None:
        answer = index[d.commit]
        return Trial(d.status, answer, d.confidence, runs, answer == max(s.culprit, 0)
                     and s.culprit >= 0)
    if d.status == "good_is_bad":
        return Trial(d.status, -1, d.confidence, runs, s.culprit < 0 or s.p <= s.q)
    return Trial(d.status, None, d.confidence, runs, False)


__all__ = ["GOOD", "GOOD_SIDE", "Scenario", "Trial", "history", "linear_dag", "merge_dag",
           "run_git_trial", "run_trial"]
