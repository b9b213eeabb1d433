"""A commit graph restricted to a bisection range; pure, no git.

Commits are strings (full hashes in production, short names in tests). Parents outside the
range are dropped: the range is ``git rev-list bad --not good...``, so a commit whose parent
is outside it has that parent on the good side.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence, Set


class Dag:
    """Commits with their in-range parents, in a topological order, children first."""

    def __init__(self, parents: Mapping[str, Sequence[str]]) -> None:
        """``parents`` maps each commit to its parents; any order (git's is kept when valid)."""
        self._parents: dict[str, tuple[str, ...]] = {
            commit: tuple(p for p in ps if p in parents) for commit, ps in parents.items()
        }
        # Every parent, those outside the range too: a culprit's boundary includes them.
        self._all_parents = {commit: tuple(ps) for commit, ps in parents.items()}
        self.order: tuple[str, ...] = _topo_order(self._parents)
        self._index = {commit: i for i, commit in enumerate(self.order)}

    @classmethod
    def from_rev_list(cls, lines: Iterable[str]) -> Dag:
        """From ``git rev-list --topo-order --parents`` output: ``sha parent...`` per line."""
        parents: dict[str, list[str]] = {}
        for line in lines:
            fields = line.split()
            if fields:
                parents[fields[0]] = fields[1:]
        return cls(parents)

    def __len__(self) -> int:
        return len(self.order)

    def __contains__(self, commit: object) -> bool:
        return commit in self._index

    def parents(self, commit: str) -> tuple[str, ...]:
        return self._parents[commit]

    def all_parents(self, commit: str) -> tuple[str, ...]:
        """Every parent of ``commit``, also those outside the range (on the good side)."""
        return self._all_parents[commit]

    def position(self, commit: str) -> int:
        """Place in the topological order (0 = newest); used to break ties like git."""
        return self._index[commit]

    def ancestors(self, commit: str, *, within: Set[str] | None = None) -> set[str]:
        """``commit`` and all its ancestors in the range (optionally only those in ``within``).

        The walk goes through the whole range, so ``within`` filters the answer, not the path.
        """
        seen = {commit}
        stack = [commit]
        while stack:
            for parent in self._parents[stack.pop()]:
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return seen if within is None else seen & within

    def ancestor_weights(self, members: Set[str]) -> dict[str, int]:
        """For each member, how many members are its ancestors-or-self.

        ``members`` must be closed under "ancestor paths stay inside" (a candidate set
        ``ancestors(bad) - ancestors(goods)`` is): then counting through member parents only
        is exact. Bitsets are freed once their last child is done, so memory follows the
        width of the history, not its length.
        """
        ordered = [c for c in self.order if c in members]
        bit = {commit: 1 << i for i, commit in enumerate(ordered)}
        children_left = dict.fromkeys(ordered, 0)
        for commit in ordered:
            for parent in self._parents[commit]:
                if parent in bit:
                    children_left[parent] += 1
        live: dict[str, int] = {}
        weights: dict[str, int] = {}
        for commit in reversed(ordered):  # parents before children
            bits = bit[commit]
            for parent in self._parents[commit]:
                if parent in bit:
                    bits |= live[parent]
                    children_left[parent] -= 1
                    if children_left[parent] == 0:
                        del live[parent]
            weights[commit] = bits.bit_count()
            if children_left[commit]:
                live[commit] = bits
        return weights


def _topo_order(parents: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """Children before parents; among ready commits the one given first goes first."""
    given = {commit: i for i, commit in enumerate(parents)}
    children = dict.fromkeys(parents, 0)
    for ps in parents.values():
        for parent in ps:
            children[parent] += 1
    ready = [(given[c], c) for c, n in children.items() if n == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, commit = heapq.heappop(ready)
        order.append(commit)
        for parent in parents[commit]:
            children[parent] -= 1
            if children[parent] == 0:
                heapq.heappush(ready, (given[parent], parent))
    if len(order) != len(parents):
        raise ValueError("the commit graph has a cycle")
    return tuple(order)
