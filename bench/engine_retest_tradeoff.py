"""What the boundary's retests buy: runs on a deterministic test against right answers on
flaky ones.

    nice -n 10 python bench/engine_retest_tradeoff.py [--trials 200] [--jobs 2] [--counts 4,3 4,4]

An answer that every run agrees with (a deterministic test's) stands once the culprit and
its parent each have ``k`` runs of this bisection (:data:`consumer.engine.adaptive.
CONSISTENT_CULPRIT_RUNS`, :data:`~consumer.engine.adaptive.CONSISTENT_PARENT_RUNS`; the
default is 4 and 4). A flaky test's runs can agree by luck, and the same runs must get the
same answer, so every retest a deterministic test is spared is one a flaky test's lucky
agreement is not checked by. This bench runs the cells of the calibration grid where that
shows (``bench/engine_calibration.py``: same scenarios, same seeds) once per pair of
counts, from one retest each side (``ceil(log2 N) + 3`` runs on a deterministic test) to
the default, and prints the deterministic runs beside the share of right answers.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_calibration import Cell, scenario

from consumer.engine import adaptive
from consumer.engine.simulate import Trial, run_trial

# (runs at the culprit, runs at its parent) before agreeing runs stand; the last is the default
COUNTS = ((2, 2), (2, 3), (3, 2), (3, 3), (4, 3), (3, 4), (4, 4))
DETERMINISTIC = Cell(1000, 1.0, 0.0, 0.0)
# Where a lucky agreement is likeliest: a parent that misses the error (p < 1), a culprit
# that shows it by chance (q > 0), both.
FLAKY = (Cell(1000, 0.8, 0.0, 0.0), Cell(1000, 1.0, 0.3, 0.0), Cell(1000, 0.8, 0.3, 0.0),
         Cell(1000, 0.8, 0.1, 0.0), Cell(1000, 0.5, 0.0, 0.0), Cell(100, 0.8, 0.0, 0.0),
         Cell(100, 1.0, 0.3, 0.0))


def run_cell(args: tuple[tuple[int, int], Cell, int]) -> tuple[tuple[int, int], Cell,
                                                                 list[Trial]]:
    counts, cell, trials = args
    # A worker process runs one variant per task: set the counts the search reads.
    adaptive.CONSISTENT_CULPRIT_RUNS, adaptive.CONSISTENT_PARENT_RUNS = counts
    return counts, cell, [run_trial(scenario(cell, seed), seed) for seed in range(trials)]


def _pair(text: str, parser: argparse.ArgumentParser) -> tuple[int, int]:
    try:
        culprit, parent = (int(part) for part in text.split(","))
    except ValueError:
        parser.error(f"--counts: {text!r} is not two integers like 4,3")
    if culprit < 1 or parent < 1:
        parser.error(f"--counts: {text!r}: each count must be at least 1")
    return culprit, parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="trials per cell")
    parser.add_argument("--jobs", type=int, default=1, help="cells simulated at once")
    parser.add_argument("--counts", nargs="+", default=None, metavar="C,P",
                        help="pairs of culprit and parent runs to compare (default: "
                        + " ".join(f"{c},{p}" for c, p in COUNTS) + ")")
    args = parser.parse_args()
    counts_list = COUNTS if args.counts is None else tuple(
        _pair(text, parser) for text in args.counts)
    cells = (DETERMINISTIC, *FLAKY)
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        done = list(pool.map(run_cell, [(k, c, args.trials) for k in counts_list for c in cells]))
    results = {(k, c): trials for k, c, trials in done}
    heads = " | ".join(f"N={c.n} p={c.p} q={c.q}" for c in FLAKY)
    print(f"{args.trials} trials a cell; right answers, and below the wrong culprits named\n")
    print(f"| culprit, parent runs | deterministic bound (N=1000) | deterministic runs mean / "
          f"max | {heads} | wrong culprits |")
    print("|---" * (4 + len(FLAKY)) + "|")
    default = (adaptive.CONSISTENT_CULPRIT_RUNS, adaptive.CONSISTENT_PARENT_RUNS)
    for counts in counts_list:
        adaptive.CONSISTENT_CULPRIT_RUNS, adaptive.CONSISTENT_PARENT_RUNS = counts
        bound = adaptive.deterministic_run_bound(DETERMINISTIC.n)
        det = results[(counts, DETERMINISTIC)]
        runs = [t.runs for t in det]
        assert all(t.right for t in det), counts  # a deterministic test is always right
        shares = []
        wrong_total = 0
        for cell in FLAKY:
            trials = results[(counts, cell)]
            right = sum(t.right for t in trials)
            wrong = sum(t.status == "found" and not t.right for t in trials)
            wrong_total += wrong
            mark = "" if right >= 0.95 * len(trials) else " (!)"
            shares.append(f"{right / len(trials):.1%}{mark} ({wrong})")
        label = f"{counts[0]}, {counts[1]}" + (" (default)" if counts == default else "")
        print(f"| {label} | {bound} = ceil(log2 N) + {bound - 10} | "
              f"{sum(runs) / len(runs):.1f} / {max(runs)} | {' | '.join(shares)} | "
              f"{wrong_total} |")
    print(f"\n(!) below 95 % right; ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
