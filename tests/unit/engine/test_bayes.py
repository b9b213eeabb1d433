from __future__ import annotations

import random

import pytest

from consumer.engine.bayes import BayesianSearch, information_gain
from consumer.engine.dag import Dag
from consumer.engine.search import SearchStatus
from consumer.engine.verdicts import Outcome, Verdict
from tests.unit.engine.histories import ancestors, linear, merged, name, range_dag

GOOD = Outcome(Verdict.GOOD)
BAD = Outcome(Verdict.BAD, bad_runs=1)
SKIP = Outcome(Verdict.SKIP)


def linear_dag(n: int) -> Dag:
    return range_dag(linear(n + 1), n, [0])  # c0001..c{n}, c0000 the good commit


def play_flaky(dag: Dag, bad: str, after: set[str], p: float, seed: int,
               other: float = 0.25, budget: int = 600) -> tuple[BayesianSearch, int]:
    rng = random.Random(seed)
    search = BayesianSearch(dag, bad)

    def run(commit: str) -> Outcome:
        if rng.random() < other:
            return SKIP
        return BAD if commit in after and rng.random() < p else GOOD

    runs = 0
    while True:  # the bad commit shows the error once, as the engine's check makes sure
        runs += 1
        outcome = run(bad)
        search.record(bad, outcome)
        if outcome.verdict is Verdict.BAD:
            break
    while runs < budget and (proposed := search.next_commits(1)):
        search.record(proposed[0], run(proposed[0]))
        runs += 1
    return search, runs


@pytest.mark.parametrize("p", [0.3, 0.6])
def test_flaky_linear_finds_the_culprit_with_confidence(p: float) -> None:
    n = 60
    dag = linear_dag(n)
    right = 0
    for seed in range(10):
        culprit = 1 + seed * 5
        after = {name(i) for i in range(culprit, n + 1)}
        search, _ = play_flaky(dag, name(n), after, p, seed)
        result = search.result()
        assert result.status is SearchStatus.FOUND
        assert result.confidence >= 0.95
        right += result.first_bad == name(culprit)
    assert right >= 9


def test_flaky_merges_find_the_culprit() -> None:
    parents = merged(120, merges=15, seed=3)
    n = len(parents) - 1
    dag = range_dag(parents, n, [0])

    anc = ancestors(parents)
    right = 0
    for seed, culprit in enumerate(range(10, 110, 20)):
        after = {name(i) for i in range(len(parents)) if culprit in anc[i] and name(i) in dag}
        search, _ = play_flaky(dag, name(n), after, 0.5, seed)
        right += search.result().first_bad == name(culprit)
    assert right >= 4


def test_a_skip_is_no_evidence() -> None:
    dag = linear_dag(20)
    search = BayesianSearch(dag, name(20))
    search.record(name(20), BAD)
    before = [search.probability(name(i)) for i in range(1, 21)]
    search.record(name(10), SKIP)
    search.record(name(10), SKIP)
    assert [search.probability(name(i)) for i in range(1, 21)] == pytest.approx(before)
    assert search.counts(name(10)).skips == 2


def test_bad_run_is_strong_good_run_weak() -> None:
    dag = linear_dag(20)
    good_once = BayesianSearch(dag, name(20))
    good_once.record(name(20), BAD)
    good_once.record(name(10), GOOD)
    bad_once = BayesianSearch(dag, name(20))
    bad_once.record(name(20), BAD)
    bad_once.record(name(10), BAD)
    # One bad run at c10 puts the culprit at or below it almost surely.
    assert bad_once.after_probability(name(10)) > 0.99
    # One good run only shifts the odds: the error may simply not have shown.
    assert 0.15 < good_once.after_probability(name(10)) < 0.5


def test_known_verdict_counts_weigh_like_single_runs() -> None:
    dag = linear_dag(30)
    at_once = BayesianSearch(dag, name(30))
    one_by_one = BayesianSearch(dag, name(30))
    for search in (at_once, one_by_one):
        search.record(name(30), Outcome(Verdict.BAD, runs=2, bad_runs=1))
    at_once.record(name(12), Outcome(Verdict.GOOD, runs=4, bad_runs=0))
    for _ in range(4):
        one_by_one.record(name(12), GOOD)
    assert at_once.probability(name(13)) == pytest.approx(one_by_one.probability(name(13)))
    assert at_once.reproduction_rate() == pytest.approx(one_by_one.reproduction_rate())


def test_k_section_picks_quantiles() -> None:
    dag = linear_dag(99)
    search = BayesianSearch(dag, name(99))
    search.record(name(99), Outcome(Verdict.BAD, runs=1, bad_runs=1))
    picks = sorted(int(c[1:]) for c in search.next_commits(3))
    assert len(picks) == 3
    for pick, quarter in zip(picks, (25, 50, 75), strict=True):
        assert abs(pick - quarter) <= 3
    assert not set(search.next_commits(3, pending={name(25), name(50)})) & {name(25), name(50)}


def test_information_gain_is_largest_inside() -> None:
    assert information_gain(0.0, 0.5) == pytest.approx(0.0, abs=1e-6)
    assert information_gain(1.0, 0.5) == pytest.approx(0.0, abs=1e-6)
    assert information_gain(0.4, 0.5) > information_gain(0.1, 0.5)


def test_clean_runs_stop_at_the_target_with_a_runner_up() -> None:
    dag = linear_dag(16)
    search = BayesianSearch(dag, name(16), confidence=0.9)
    search.record(name(16), BAD)
    culprit = 7
    for _ in range(200):
        proposed = search.next_commits(1)
        if not proposed:
            break
        index = int(proposed[0][1:])
        search.record(proposed[0], BAD if index >= culprit else GOOD)
    result = search.result()
    assert result.first_bad == name(culprit)
    assert result.confidence >= 0.9
    up = search.runner_up(name(culprit))
    assert up is None or up[1] < 0.1


def test_untestable_commit_is_given_up() -> None:
    dag = linear_dag(8)
    search = BayesianSearch(dag, name(8))
    search.record(name(8), BAD)
    for _ in range(6):
        search.record(name(4), SKIP)
    assert name(4) not in search.next_commits(8)
