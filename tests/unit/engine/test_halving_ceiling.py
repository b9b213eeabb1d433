"""``bench/halving_retest_ceiling.py``: the ceiling it computes is exact, about the engine's
own halving, and says what BENCHMARKS.md quotes it for."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

from consumer.engine.search import DeterministicSearch
from consumer.engine.simulate import linear_dag, name
from consumer.engine.verdicts import Outcome, Verdict


@pytest.fixture(scope="module")
def ceiling() -> ModuleType:
    bench = str(Path(__file__).resolve().parents[3] / "bench")
    sys.path.insert(0, bench)
    try:
        import halving_retest_ceiling  # type: ignore[import-not-found]
    finally:
        sys.path.remove(bench)
    return halving_retest_ceiling


@pytest.mark.parametrize("n", [2, 7, 100, 1000])
def test_the_bench_halves_where_the_engine_does(ceiling: ModuleType, n: int) -> None:
    index = {name(i): i for i in range(n)}
    for culprit in range(0, n, max(1, n // 50)):
        search = DeterministicSearch(linear_dag(n), name(n - 1))
        engine = []
        while picks := search.next_commits(1, set()):
            engine.append(index[picks[0]])
            search.record(picks[0], Outcome.of(
                Verdict.BAD if index[picks[0]] >= culprit else Verdict.GOOD))
        bench = []
        good, first_bad = -1, n - 1
        while first_bad - good > 1:
            middle = ceiling.halving_midpoint(good, first_bad)
            bench.append(middle)
            good, first_bad = (good, middle) if middle >= culprit else (middle, first_bad)
        assert bench == engine, culprit
        assert first_bad == culprit


def test_two_commits_by_hand(ceiling: ModuleType) -> None:
    # Commits 0 and 1 (the bad one), the culprit either, equally likely. The halving runs
    # commit 0 once; then the check of the bad commit and one retest each side.
    p, q = 0.8, 0.3
    culprit_0 = (1 - p) + p * (p + (1 - p) * (1 - p * (1 - p)))  # a miss at 0 names 1
    culprit_1 = (1 - p) + p * ((1 - q) + q * (1 - q * (1 - q)))  # a false error names 0
    [got] = ceiling.ceiling(2, p, q, [ceiling.Split(1, 1, 1)])
    assert got == pytest.approx((culprit_0 + culprit_1) / 2)


def test_a_deterministic_test_is_always_right(ceiling: ModuleType) -> None:
    splits = [ceiling.Split(*raw) for raw in ceiling.SPLITS]
    assert ceiling.ceiling(100, 1.0, 0.0, splits) == pytest.approx([1.0] * len(splits))


def test_three_spare_runs_leave_a_rise_from_0_to_50_percent_below_95_percent(
        ceiling: ModuleType) -> None:
    # What BENCHMARKS.md quotes the bench for: ceil(log2 N) + 3 runs on a deterministic
    # test and >= 95 % right where p = 0.5 against q = 0 exclude each other for every search
    # that halves as git does, however it spends the three runs; five can have both.
    for split in ceiling.splits_of(3):
        [share] = ceiling.ceiling(100, 0.5, 0.0, [split])
        assert share < 0.95, split
    alone = (0.5, 0.0)
    assert ceiling.pair_ceiling(100, alone, alone, 3) < 0.95
    assert ceiling.pair_ceiling(100, alone, alone, 5) >= 0.95


@pytest.mark.parametrize("spare", [3, 4])
def test_the_pair_bound_is_above_every_fixed_split(ceiling: ModuleType, spare: int) -> None:
    # Spending the spare runs bisection by bisection can only do better than one split for
    # all, so a bound below the best split would be wrong.
    first, second = (0.8, 0.0), (1.0, 0.3)
    splits = ceiling.splits_of(spare)
    fixed = max(min(a, b) for a, b in zip(ceiling.ceiling(100, *first, splits),
                                          ceiling.ceiling(100, *second, splits), strict=True))
    assert ceiling.pair_ceiling(100, first, second, spare) >= fixed
