from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.engine.dag import Dag
from consumer.engine.search import DeterministicSearch, SearchStatus
from consumer.engine.verdicts import Outcome, Verdict
from tests.unit.engine.histories import linear, merged, name, play, range_dag


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 9, 16, 17, 33, 100])
def test_linear_finds_every_culprit_within_log2_steps(n: int) -> None:
    parents = linear(n + 1)  # commit 0 is the good one, n commits in the range
    for culprit in range(1, n + 1):
        played = play(parents, culprit)
        assert played.result.status is SearchStatus.FOUND
        assert played.result.first_bad == name(culprit)
        assert len(played.tested) <= math.ceil(math.log2(n))


def test_first_commit_of_the_range_bad() -> None:
    played = play(linear(50), 1)
    assert played.result.first_bad == name(1)


def test_last_commit_bad_is_the_bad_commit_itself() -> None:
    played = play(linear(50), 49)
    assert played.result.first_bad == name(49)
    assert name(48) in played.tested  # its parent was shown good


@pytest.mark.parametrize("seed", range(6))
def test_merges_find_the_culprit(seed: int) -> None:
    parents = merged(300, merges=40, seed=seed)
    n = len(parents) - 1
    for culprit in range(1, len(parents), 7):
        played = play(parents, culprit)
        assert played.result.first_bad == name(culprit), (seed, culprit)
        assert len(played.tested) <= math.ceil(math.log2(n)) + 1


def test_culprit_on_a_side_branch() -> None:
    parents = merged(60, merges=8, seed=3)
    side = [i for i, ps in enumerate(parents) if len(ps) == 1 and ps[0] != i - 1]
    assert side, "the plan has branch commits"
    for culprit in side:
        assert play(parents, culprit).result.first_bad == name(culprit)


def test_skip_right_before_the_culprit_is_ambiguous() -> None:
    played = play(linear(40), 20, skip={18, 19})
    result = played.result
    assert result.status is SearchStatus.AMBIGUOUS
    assert set(result.candidates) == {name(18), name(19), name(20)}
    assert result.reason is not None and "skip" in result.reason
    assert result.first_bad is None


def test_skipped_culprit_is_ambiguous_with_its_child() -> None:
    result = play(linear(40), 20, skip={20}).result
    assert result.status is SearchStatus.AMBIGUOUS
    assert set(result.candidates) == {name(20), name(21)}


def test_skip_after_the_culprit_still_finds_it() -> None:
    played = play(linear(40), 20, skip={21, 22, 23})
    assert played.result.status is SearchStatus.FOUND
    assert played.result.first_bad == name(20)


def test_skip_far_from_the_boundary_costs_little() -> None:
    played = play(linear(1001), 613, skip=set(range(495, 505)))
    assert played.result.first_bad == name(613)
    assert len(played.tested) <= math.ceil(math.log2(1000)) + 1


def test_all_skipped_leaves_every_commit_a_candidate() -> None:
    result = play(linear(6), 3, skip={1, 2, 3, 4}).result
    assert result.status is SearchStatus.AMBIGUOUS
    assert set(result.candidates) == {name(i) for i in range(1, 6)}


def test_root_culprit_without_good_commit() -> None:
    parents = linear(10)
    played = play(parents, 0, good=None)
    assert played.result.first_bad == name(0)


def test_unfinished_before_any_test() -> None:
    dag = range_dag(linear(10), 9, [0])
    result = DeterministicSearch(dag, name(9)).result()
    assert result.status is SearchStatus.UNFINISHED
    assert len(result.candidates) == 9


def test_good_descendant_of_bad_is_inconsistent() -> None:
    dag = range_dag(linear(10), 9, [0])
    search = DeterministicSearch(dag, name(9))
    search.record(name(5), Outcome.of(Verdict.BAD))
    search.record(name(7), Outcome.of(Verdict.GOOD))
    assert search.result().status is SearchStatus.INCONSISTENT
    assert search.next_commits(1) == []


def test_proposals_skip_pending_and_known_commits() -> None:
    dag = range_dag(linear(101), 100, [0])
    search = DeterministicSearch(dag, name(100))
    first = search.next_commits(1)
    assert first == [name(50)]
    assert search.next_commits(1, pending={name(50)}) != first
    search.record(name(50), Outcome.of(Verdict.SKIP))
    assert name(50) not in search.next_commits(5)


def test_k_section_splits_into_near_equal_parts() -> None:
    dag = range_dag(linear(101), 100, [0])
    search = DeterministicSearch(dag, name(100))
    picks = search.next_commits(3)
    assert sorted(int(p[1:]) for p in picks) == [25, 50, 75]


def test_bad_outside_candidates_is_ignored() -> None:
    dag = Dag({"d": ["b", "c"], "c": ["a"], "b": ["a"], "a": []})
    search = DeterministicSearch(dag, "b")
    assert search.candidates == {"a", "b"}
    search.record("c", Outcome.of(Verdict.BAD))  # not an ancestor of b
    assert search.candidates == {"a", "b"}


def test_progress_estimates_shrink() -> None:
    dag = range_dag(linear(65), 64, [0])
    search = DeterministicSearch(dag, name(64))
    assert search.est_steps_left() == 6
    search.record(name(32), Outcome.of(Verdict.GOOD))
    assert search.candidates_left() == 32
    assert search.est_steps_left() == 5


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(3, 80),
    merges=st.integers(0, 12),
    data=st.data(),
)
def test_any_history_any_skips(seed: int, n: int, merges: int, data: st.DataObject) -> None:
    """FOUND is the culprit; AMBIGUOUS holds it, and every other candidate was skipped."""
    parents = merged(n, merges, seed)
    culprit = data.draw(st.integers(1, n - 1))
    skip = data.draw(st.sets(st.integers(1, n - 2), max_size=n // 3))
    played = play(parents, culprit, skip=skip)
    result = played.result
    if result.status is SearchStatus.FOUND:
        assert result.first_bad == name(culprit)
    else:
        assert result.status is SearchStatus.AMBIGUOUS
        assert name(culprit) in result.candidates
        bad = [c for c in result.candidates if int(c[1:]) not in skip]
        assert len(bad) == 1


def test_run_of_skips_after_the_culprit_is_left_early() -> None:
    played = play(linear(1001), 613, skip=set(range(614, 625)))
    assert played.result.first_bad == name(613)
    assert len(played.tested) <= math.ceil(math.log2(1000)) + 1
