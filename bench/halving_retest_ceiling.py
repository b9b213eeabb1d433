"""The most right answers a search that halves as git does can give a flaky test, for each
way of spending the runs a deterministic test does not need.

    python bench/halving_retest_ceiling.py [--sizes 100 1000]

Issue 14 asks two things of the default search that pull against each other: at most
``ceil(log2 N) + 3`` runs on a deterministic test, and >= 95 % right answers on every test
whose rate rises by 0.2 or more (p = 0.5 against q = 0, p = 1 against q = 0.3, ...). Git's
halving never runs a commit twice, so its runs agree with *some* deterministic culprit
whatever the test does: a false error on a good commit (rate q) moves the answer down to
that commit, a missed error on a bad commit (rate 1 - p) moves it up past it. Only runs the
halving does not need can catch that: the bad commit's check, and retests of the named
culprit (a false error shows again at rate q) and of its parent (a miss repeats at rate
1 - p). A deterministic test pays for every one of them.

No engine runs here; the probabilities are exact. The halving is the engine's own on a
linear history of N commits (its midpoints are
:class:`consumer.engine.search.DeterministicSearch`'s), the culprit drawn as
``bench/engine_calibration.py`` draws it (the first commit in 10 % of the trials, the last
in 10 %, any commit otherwise), no commit untestable, no unrelated error. Any run that
contradicts the halving's answer counts as a *right* answer, as if a flaky-test search then
always found the truth, so every figure is a ceiling:

- the first table: ``check`` runs of the bad commit, ``rc`` retests of the named culprit
  and ``rp`` of its parent, the same in every bisection (``ceil(log2 N) + check + rc + rp``
  runs on a deterministic test);
- the second: each bisection spends its spare runs as its own runs suggest (on the check,
  the culprit or the parent, by chance too), and the figure is an upper bound on the
  smaller share of right answers two cells can have at once (weak duality: for every
  weight, the smaller share is at most the weighted mean, and the best weighted mean is
  found bisection by bisection). A spare run anywhere else agrees with a wrong answer at
  least as often as one of these three.

Where p = 0.5 and q = 0, where a spare run goes does not matter: a bad commit shows the
error in half its runs, so each spare run agrees with a wrong answer half the time, and the
halving alone ends on a wrong commit in most bisections.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

# (check, culprit retests, parent retests): every split of 3 spare runs, some of 4 to 6,
# and the engine's default (the check and 3 + 3 retests: + 7)
SPLITS = ((1, 1, 1), (1, 2, 0), (1, 0, 2), (0, 2, 1), (0, 1, 2), (0, 3, 0), (0, 0, 3),
          (1, 2, 1), (1, 1, 2), (0, 2, 2), (1, 2, 2), (1, 3, 1), (1, 3, 2), (1, 2, 3), (1, 3, 3))
# Pairs of cells that pull the spare runs apart: misses want parent retests, false errors
# culprit retests, a low p the check
PAIRS = (((0.8, 0.0), (1.0, 0.3)), ((0.5, 0.0), (1.0, 0.3)), ((0.8, 0.0), (1.0, 0.1)))
CELLS = ((1.0, 0.3), (1.0, 0.1), (0.8, 0.0), (0.8, 0.1), (0.8, 0.3), (0.5, 0.0), (0.5, 0.1),
         (0.3, 0.0))


@dataclass(frozen=True)
class Split:
    check: int  # runs of the bad commit
    culprit: int  # retests of the named culprit
    parent: int  # retests of its parent (the good commit when the culprit is the first)

    @property
    def spare(self) -> int:
        return self.check + self.culprit + self.parent


def culprit_weights(n: int) -> list[float]:
    """P(the culprit is commit i), as ``bench/engine_calibration.py`` places it: the first
    commit in 10 % of the trials, the last in 10 %, any commit otherwise."""
    weights = [0.8 / n] * n
    weights[0] += 0.1
    weights[-1] += 0.1
    return weights


def halving_midpoint(good: int, first_bad: int) -> int:
    """The commit git's halving runs next between a good and a bad commit of a linear
    history, rounded as :class:`consumer.engine.search.DeterministicSearch` rounds it."""
    return (good + first_bad + 1) // 2


Leaf = tuple[int, int]  # where the halving ends: (parent, named culprit); -1 the good commit


def wrong_mass(n: int, p: float, q: float) -> dict[Leaf, tuple[float, float]]:
    """For every way the halving can end on a wrong culprit: the probability (culprit drawn
    as the calibration grid draws it) that it ends there with the true culprit *after* the
    named one (the named culprit showed false errors: rate q on it and on its parent) and
    *before* it (its parent missed the error: rate p on both)."""
    mass: dict[Leaf, list[float]] = {}
    for culprit, weight in enumerate(culprit_weights(n)):
        stack = [(-1, n - 1, weight)]  # the bad commit n - 1 is known bad, the good one good
        while stack:
            good, first_bad, prob = stack.pop()
            if first_bad - good <= 1:
                if first_bad != culprit:
                    sides = mass.setdefault((good, first_bad), [0.0, 0.0])
                    sides[0 if first_bad < culprit else 1] += prob
                continue
            middle = halving_midpoint(good, first_bad)
            shows = p if middle >= culprit else q
            if shows > 0.0:
                stack.append((good, middle, prob * shows))
            if shows < 1.0:
                stack.append((middle, first_bad, prob * (1.0 - shows)))
    return {leaf: (after, before) for leaf, (after, before) in mass.items()}


def agreeing(after: float, before: float, p: float, q: float, split: Split) -> float:
    """The probability that a wrong ending also has every spare run agree with it."""
    return p ** split.check * (after * q ** split.culprit * (1.0 - q) ** split.parent
                               + before * p ** split.culprit * (1.0 - p) ** split.parent)


def ceiling(n: int, p: float, q: float, splits: Sequence[Split]) -> list[float]:
    """For each split, the exact probability that the search ends right at best: the truth
    named, or a run that contradicts the halving's answer (a flaky test detected)."""
    mass = wrong_mass(n, p, q)
    return [1.0 - sum(agreeing(after, before, p, q, split) for after, before in mass.values())
            for split in splits]


def splits_of(spare: int) -> list[Split]:
    return [Split(check, culprit, spare - check - culprit)
            for check in range(spare + 1) for culprit in range(spare + 1 - check)]


def pair_ceiling(n: int, first: tuple[float, float], second: tuple[float, float],
                 spare: int) -> float:
    """The most right answers a halving search can give *both* cells at once with ``spare``
    runs a trace, each trace spending them as it likes (on the check, the culprit, the
    parent; by chance too). An upper bound by weak duality: for every weight w, the smaller
    share is at most the w-weighted mean, and the best mean splits trace by trace."""
    masses = (wrong_mass(n, *first), wrong_mass(n, *second))
    options = splits_of(spare)
    traces = set(masses[0]) | set(masses[1])
    losses = []  # per trace, per option: the wrong answers in each cell
    for leaf in traces:
        per = []
        for split in options:
            pair = []
            for (p, q), mass in zip((first, second), masses, strict=True):
                after, before = mass.get(leaf, (0.0, 0.0))
                pair.append(agreeing(after, before, p, q, split))
            per.append((pair[0], pair[1]))
        losses.append(per)
    best = 1.0
    for step in range(201):
        weight = step / 200
        lost = sum(min(weight * a + (1.0 - weight) * b for a, b in per) for per in losses)
        best = min(best, 1.0 - lost)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args()
    started = time.monotonic()
    for n in args.sizes:
        halving = math.ceil(math.log2(n))
        print(f"\nN = {n}: the most right answers, exactly (! below 95 %)\n")
        heads = " | ".join(f"p = {p}, q = {q}" for p, q in CELLS)
        print(f"| check, culprit, parent | deterministic runs | {heads} | all >= 95 % |")
        print("|---" * (3 + len(CELLS)) + "|")
        splits = [Split(*raw) for raw in SPLITS]
        by_cell = [ceiling(n, p, q, splits) for p, q in CELLS]
        for i, split in enumerate(splits):
            shares = [cell[i] for cell in by_cell]
            cells = " | ".join(f"{s:.1%}" + (" !" if s < 0.95 else "") for s in shares)
            ok = "yes" if min(shares) >= 0.95 else "no"
            print(f"| {split.check}, {split.culprit}, {split.parent} | "
                  f"{halving + split.spare} = ceil(log2 N) + {split.spare} | {cells} | {ok} |")
    print("\nEach trace spending its spare runs as it likes, the most right answers both "
          "cells can have at once (an upper bound):\n")
    print("| N | spare runs | deterministic runs | " + " | ".join(
        f"p = {a[0]}, q = {a[1]} and p = {b[0]}, q = {b[1]}" for a, b in PAIRS) + " |")
    print("|---" * (3 + len(PAIRS)) + "|")
    for n in args.sizes:
        for spare in (3, 4, 5):
            shares = [pair_ceiling(n, a, b, spare) for a, b in PAIRS]
            cells = " | ".join(f"{s:.1%}" + (" !" if s < 0.95 else "") for s in shares)
            print(f"| {n} | {spare} | ceil(log2 N) + {spare} = "
                  f"{math.ceil(math.log2(n)) + spare} | {cells} |")
    print(f"\n({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
