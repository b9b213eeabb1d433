"""Before "cannot tell", the rates are measured where no hypothesis doubts the side.

The runs needed at the information limit come from the rates the posterior reads; a search
that wandered can misread them from runs whose side it does not know. The bad commit and
the good commit get :data:`RATE_CHECK_RUNS` usable runs before that verdict stands.
"""

from __future__ import annotations

from consumer.engine.adaptive import RATE_CHECK_RUNS, UNDECIDED, AdaptiveSearch
from consumer.engine.simulate import GOOD, linear_dag, name
from consumer.engine.verdicts import Outcome, Verdict

BAD = Outcome.of(Verdict.BAD)
GOOD_RUN = Outcome.of(Verdict.GOOD)


def _runs(search: AdaptiveSearch, commit: str, runs: int, errors: int) -> None:
    for i in range(runs):
        search.record(commit, BAD if i < errors else GOOD_RUN)


def _flaky_search(n: int = 40) -> AdaptiveSearch:
    """A search that has seen a commit both ways: the halving is over."""
    search = AdaptiveSearch(linear_dag(n), name(n - 1), [GOOD], confidence=0.95)
    search.record(name(n - 1), BAD)
    search.record(name(n // 2), BAD)
    search.record(name(n // 2), GOOD_RUN)
    assert not search.consistent
    return search


def _hopeless_looking_search() -> AdaptiveSearch:
    """Runs all over a long range that look alike: the rates read close, and the runs
    needed exceed the budget many times, while the ends have hardly been run."""
    search = _flaky_search(200)
    for i in range(0, 199, 2):
        _runs(search, name(i), 1, i % 4 // 2)
    _runs(search, GOOD, 2, 1)
    _runs(search, name(199), 3, 2)
    assert search.decision(runs_used=90, budget=100) is None
    assert {p.commit for p in search.next_picks(2)} == {GOOD, name(199)}
    return search


def test_cannot_tell_waits_for_the_rates_measured_at_the_ends() -> None:
    search = _hopeless_looking_search()
    _runs(search, GOOD, RATE_CHECK_RUNS, 8)
    _runs(search, name(199), RATE_CHECK_RUNS, 9)
    decision = search.decision(runs_used=95, budget=100)
    assert decision is not None and decision.status == UNDECIDED
    assert decision.reason is not None and "would be needed" in decision.reason
    assert "at the good commit good in 9 of 22" in decision.reason


def test_ends_that_differ_keep_the_search_going() -> None:
    # The rates read at the ends are far apart: the target is not out of reach after all.
    search = _hopeless_looking_search()
    _runs(search, GOOD, RATE_CHECK_RUNS, 0)
    _runs(search, name(199), RATE_CHECK_RUNS, 18)
    assert search.decision(runs_used=95, budget=100) is None
