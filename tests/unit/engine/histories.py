"""Synthetic histories for the pure search, and a driver that plays a bisection on them."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from consumer.engine.dag import Dag
from consumer.engine.search import DeterministicSearch, SearchResult
from consumer.engine.synthetic import plan_history
from consumer.engine.verdicts import Outcome, Verdict


def name(i: int) -> str:
    return f"c{i:04d}"


def linear(n: int) -> list[tuple[int, ...]]:
    return [()] + [(i - 1,) for i in range(1, n)]


def merged(n: int, merges: int, seed: int = 0) -> list[tuple[int, ...]]:
    return list(plan_history(n, merges, seed))


def ancestors(parents: Sequence[tuple[int, ...]]) -> list[set[int]]:
    anc: list[set[int]] = []
    for i, ps in enumerate(parents):
        here = {i}
        for p in ps:
            here |= anc[p]
        anc.append(here)
    return anc


def range_dag(parents: Sequence[tuple[int, ...]], bad: int, goods: Collection[int]) -> Dag:
    """``git rev-list bad --not goods`` on an index history."""
    anc = ancestors(parents)
    excluded: set[int] = set()
    for g in goods:
        excluded |= anc[g]
    members = sorted(anc[bad] - excluded, reverse=True)
    return Dag({name(i): [name(p) for p in parents[i]] for i in members})


@dataclass
class Played:
    result: SearchResult
    tested: list[str]


def play(
    parents: Sequence[tuple[int, ...]],
    culprit: int,
    *,
    good: int | None = 0,
    skip: Collection[int] = (),
    bad: int | None = None,
    limit: int = 10_000,
) -> Played:
    """Bisect with a perfect oracle: bad iff ``culprit`` is an ancestor-or-self."""
    anc = ancestors(parents)
    bad = len(parents) - 1 if bad is None else bad
    dag = range_dag(parents, bad, [] if good is None else [good])
    search = DeterministicSearch(dag, name(bad))
    tested: list[str] = []
    while len(tested) < limit:
        proposal = search.next_commits(1)
        if not proposal:
            break
        (commit,) = proposal
        assert commit not in tested, "a commit was proposed twice"
        assert commit in search.candidates
        tested.append(commit)
        i = int(commit[1:])
        if i in skip:
            verdict = Verdict.SKIP
        else:
            verdict = Verdict.BAD if culprit in anc[i] else Verdict.GOOD
        search.record(commit, Outcome.of(verdict))
    return Played(search.result(), tested)
