"""Is the default search right, cheap and honest? The calibration grid of issue 14.

    nice -n 10 python bench/engine_calibration.py [--trials 200] [--jobs 2] [--sizes 100 1000]
        [--merges] [--p 0.5] [--q 0.3] [--noise 0] [--known-rates] [--q-never 0.3] [--no-flaky]
        [--older]

Every cell of p (the rate our error shows at and after the first bad commit) x q (its
rate before it) x noise (runs ending in an unrelated error: skips) x N (commits in the
range) runs ``--trials`` simulated bisections with the engine's *default* settings
(:mod:`consumer.engine.simulate`: the engine's own bad-commit check, search, verification
and stopping rules; only the test is simulated, no git), on a linear history or, with
``--merges``, on a merge-heavy one (N // 15 side branches of 1-6 commits forked and merged
back, a different history in every trial: :func:`consumer.engine.synthetic.plan_history`,
as in ``bench/engine_flaky.py``). The culprit
is the first commit of the range in 10 % of the trials, the last (the bad commit) in 10 %,
anywhere else otherwise; three commits near it (not it or its parents) cannot be tested.

Per cell: how often the named culprit is right, what else was answered (wrong culprit,
good_is_bad, undecided = "cannot tell", ambiguous, not reproduced), the runs (mean, p95)
against the information limit ``log2 N / C(p, q) / (1 - noise)`` (C the capacity of the
binary channel a run is), and calibration: among answers reported at >= c, how many were
right, for c = 0.5, 0.8, 0.95; a cell is *calibrated* when no level has more wrong answers
than a binomial at the stated confidence gives with 1 % probability.

``--known-rates`` is a diagnostic, not the engine: the model is told p and q (its prior
put on the true rates), which separates the runs spent learning the rates from the
search's own cost. ``--q-never`` replaces the prior ``P(q = 0)``
(:data:`consumer.engine.changepoint.Q_NEVER`) to compare priors on the same seeds.
``--older`` puts the regression before the range instead (the given good commit shows the
error at rate p, as every commit does; the right answer is ``good_is_bad``; q is not used).
``--no-flaky`` runs git's search instead (``limits.flaky`` false,
:func:`consumer.engine.simulate.run_git_trial`): what declaring a test deterministic costs
when it is not. ``--p``, ``--q`` and ``--noise`` pick cells.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import consumer.engine.changepoint as changepoint
from consumer.engine.changepoint import RATES, Rates, capacity
from consumer.engine.simulate import Scenario, Trial, merge_history, run_git_trial, run_trial
from consumer.engine.spec import (
    DEFAULT_DETERMINISTIC_RUN_BUDGET,
    DEFAULT_REPRODUCE_RUNS,
    DEFAULT_RUN_BUDGET,
)

P_VALUES = (1.0, 0.8, 0.5, 0.3)
Q_VALUES = (0.0, 0.05, 0.1, 0.3)
NOISE = (0.0, 0.25)
LEVELS = (0.5, 0.8, 0.95)
UNTESTABLE_NEAR = 3  # untestable commits near the culprit in every trial


@dataclass(frozen=True)
class Cell:
    n: int
    p: float
    q: float
    noise: float
    # The regression is older than the range: the good commit is bad. Left out of the repr,
    # which seeds the cell's scenarios: every other cell keeps the seeds of its earlier runs.
    older: bool = field(default=False, repr=False)

    @property
    def signal(self) -> bool:
        if self.older:
            return self.p >= 0.2 - 1e-9
        return self.p - self.q >= 0.2 - 1e-9

    def limit(self) -> float:
        """Runs at the information limit: log2 N bits at C(p, q) bits per usable run."""
        if self.p <= self.q or self.older:
            return math.inf
        return math.log2(self.n) / capacity(Rates(self.p, self.q)) / (1.0 - self.noise)


@dataclass(frozen=True)
class Options:
    """How every cell of one bench run is simulated."""

    merges: bool = False
    known_rates: bool = False
    q_never: float | None = None
    budget: int = DEFAULT_RUN_BUDGET
    reproduce_runs: int = DEFAULT_REPRODUCE_RUNS
    bursts: tuple[float, int] = (0.0, 0)  # (P a burst starts before a run, its runs)
    git_search: bool = False  # --no-flaky: git's search instead of the default one


def scenario(cell: Cell, seed: int, merges: bool = False,
             bursts: tuple[float, int] = (0.0, 0)) -> Scenario:
    rng = random.Random(f"{cell}-{seed}")
    draw = rng.random()
    culprit = 0 if draw < 0.1 else cell.n - 1 if draw < 0.2 else rng.randrange(cell.n)
    if cell.older:
        culprit = -1  # every commit of the range shows the error at rate p, the good one too
    merge_count = cell.n // 15 if merges else 0
    # The culprit and its parents stay testable: else no run could tell them apart, and
    # "ambiguous" would be the right answer.
    boundary = {culprit, culprit - 1}
    if merge_count and culprit >= 0:
        boundary = {culprit, *merge_history(cell.n, merge_count, seed)[0][culprit]}
    near = [i for i in range(culprit - 8, culprit + 9)
            if 0 <= i < cell.n - 1 and i not in boundary]
    untestable = frozenset(rng.sample(near, min(UNTESTABLE_NEAR, len(near))))
    return Scenario(cell.n, culprit, cell.p, cell.q, cell.noise, untestable,
                    merges=merge_count, history_seed=seed, burst_start=bursts[0],
                    burst_runs=bursts[1])


def tell_rates(cell: Cell | None, q_never: float | None = None) -> None:
    """Put the model's prior on the cell's true rates (None: the engine's own prior, with
    ``q_never`` for P(q = 0) when given)."""
    if q_never is not None:
        changepoint.Q_NEVER = q_never
    if cell is None:
        changepoint._U, changepoint._V = changepoint._prior_weights()
    else:
        changepoint._U = tuple(float(r == cell.p) for r in RATES)
        changepoint._V = tuple(float(r == cell.q) for r in RATES)
    changepoint.class_likelihood.cache_clear()


def run_cell(args: tuple[Cell, range, Options]) -> tuple[Cell, list[Trial], float]:
    cell, seeds, opts = args
    tell_rates(cell if opts.known_rates else None, opts.q_never)
    started = time.monotonic()
    if opts.git_search:
        results = [run_git_trial(scenario(cell, seed, opts.merges, opts.bursts), seed,
                                 budget=opts.budget) for seed in seeds]
    else:
        results = [run_trial(scenario(cell, seed, opts.merges, opts.bursts), seed,
                             budget=opts.budget, reproduce_runs=opts.reproduce_runs)
                   for seed in seeds]
    return cell, results, time.monotonic() - started


def save_trials(path: str, cell: Cell, seeds: range, results: list[Trial],
                opts: Options) -> None:
    """Append one JSON line per trial, so that runs over other seeds can be pooled exactly."""
    with open(path, "a", encoding="utf-8") as out:
        for seed, trial in zip(seeds, results, strict=True):
            out.write(json.dumps({
                "n": cell.n, "p": cell.p, "q": cell.q, "noise": cell.noise,
                "merges": opts.merges, "budget": opts.budget,
                "reproduce_runs": opts.reproduce_runs, "bursts": list(opts.bursts),
                "search": "git" if opts.git_search else "default", "older": cell.older,
                "seed": seed, "status": trial.status,
                "answer": trial.answer, "confidence": trial.confidence, "runs": trial.runs,
                "right": trial.right}) + "\n")


def binomial_tail_limit(n: int, wrong_rate: float, alpha: float = 0.01) -> int:
    """The most wrong answers of ``n`` that a true wrong rate gives with P >= ``alpha``."""
    k, cdf = 0, 0.0
    while k <= n:
        cdf += math.comb(n, k) * wrong_rate ** k * (1 - wrong_rate) ** (n - k)
        if cdf >= 1.0 - alpha:
            return k
        k += 1
    return n


def calibration(results: list[Trial]) -> tuple[str, bool]:
    parts = []
    ok = True
    for level in LEVELS:
        claimed = [t for t in results if t.status in ("found", "good_is_bad")
                   and t.confidence >= level]
        if not claimed:
            parts.append("-")
            continue
        right = sum(t.right for t in claimed)
        wrong = len(claimed) - right
        fine = wrong <= binomial_tail_limit(len(claimed), 1.0 - level)
        ok = ok and fine
        parts.append(f"{right}/{len(claimed)}{'' if fine else ' (!)'}")
    return " | ".join(parts), ok


def row(cell: Cell, results: list[Trial], took: float) -> tuple[str, bool, bool]:
    n = len(results)
    right = sum(t.right for t in results)
    count = {s: sum(t.status == s for t in results)
             for s in ("found", "good_is_bad", "undecided", "ambiguous", "not_reproduced")}
    wrong = sum(t.status in ("found", "good_is_bad") and not t.right for t in results)
    runs = sorted(t.runs for t in results)
    mean = sum(runs) / n
    p95 = runs[min(n - 1, math.ceil(0.95 * n) - 1)]
    limit = cell.limit()
    ratio = f"{mean / limit:.2f}" if math.isfinite(limit) else "-"
    calib, calibrated = calibration(results)
    accurate = right / n >= 0.95 if cell.signal else True
    other = (f"{wrong} wrong, {count['good_is_bad']} good_is_bad, {count['undecided']} "
             f"undecided, {count['ambiguous']} ambiguous, {count['not_reproduced']} not repr.")
    q = "older" if cell.older else cell.q
    line = (f"| {cell.n} | {cell.p} | {q} | {cell.noise} | {right / n:.1%}"
            f"{'' if accurate else ' (!)'} | {other} | {mean:.1f} | {p95} | "
            f"{limit:.1f} | {ratio} | {calib}{'' if calibrated else ' **not calibrated**'} |")
    return line, accurate, calibrated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="trials per cell")
    parser.add_argument("--first-trial", type=int, default=0, metavar="K",
                        help="the trials' seeds are K .. K + trials - 1 (default 0): a run "
                             "over other seeds adds trials to an earlier one")
    parser.add_argument("--save", metavar="FILE",
                        help="append every trial to FILE as a JSON line")
    parser.add_argument("--jobs", type=int, default=1, help="cells simulated at once")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000],
                        help="commits in the range (N)")
    parser.add_argument("--merges", action="store_true",
                        help="merge-heavy histories (N // 15 side branches) instead of linear")
    parser.add_argument("--p", type=float, nargs="+", default=P_VALUES, help="cells: p")
    parser.add_argument("--q", type=float, nargs="+", default=Q_VALUES, help="cells: q")
    parser.add_argument("--noise", type=float, nargs="+", default=NOISE, help="cells: noise")
    parser.add_argument("--known-rates", action="store_true",
                        help="diagnostic: tell the model p and q (cells with q < p only)")
    parser.add_argument("--q-never", type=float, default=None,
                        help="diagnostic: the prior P(q = 0) instead of the engine's")
    parser.add_argument("--budget", type=int, default=None,
                        help=f"the run budget (default: the engine's, {DEFAULT_RUN_BUDGET}; "
                             f"{DEFAULT_DETERMINISTIC_RUN_BUDGET} with --no-flaky)")
    parser.add_argument("--no-flaky", action="store_true",
                        help="git's search (limits.flaky false), one run a commit and one "
                             "fresh run each side of the boundary: what declaring a flaky "
                             "test deterministic costs")
    parser.add_argument("--older", action="store_true",
                        help="the regression older than the range: the good commit shows the "
                             "error at rate p like every commit (right: good_is_bad; q unused)")
    parser.add_argument("--reproduce-runs", type=int, default=DEFAULT_REPRODUCE_RUNS,
                        help="usable runs of the bad commit without the error before "
                             f"'not reproduced' (default: the engine's, {DEFAULT_REPRODUCE_RUNS})")
    parser.add_argument("--bursts", type=float, nargs=2, default=(0.0, 0),
                        metavar=("START", "RUNS"),
                        help="robustness: failures in bursts, a burst starting before a run "
                             "with probability START and then RUNS runs in a row showing "
                             "the error whatever the commit (default: none)")
    args = parser.parse_args()
    if args.budget is None:
        args.budget = DEFAULT_DETERMINISTIC_RUN_BUDGET if args.no_flaky else DEFAULT_RUN_BUDGET
    opts = Options(merges=args.merges, known_rates=args.known_rates, q_never=args.q_never,
                   budget=args.budget, reproduce_runs=args.reproduce_runs,
                   bursts=(args.bursts[0], int(args.bursts[1])), git_search=args.no_flaky)
    off_grid = [r for r in (*args.p, *args.q) if r not in RATES]
    if args.known_rates and off_grid:
        parser.error(f"--known-rates: {off_grid} not on the model's rate grid {RATES}")
    cells = [Cell(n, p, q, noise) for n in args.sizes for p in args.p for q in args.q
             for noise in args.noise if q < p or (q == p and not args.known_rates)]
    if args.older:
        if args.known_rates:
            parser.error("--older: the rates are not known (every commit is after the culprit)")
        cells = [Cell(n, p, 0.0, noise, older=True) for n in args.sizes for p in args.p
                 for noise in args.noise]
    started = time.monotonic()
    shape = "merge-heavy" if args.merges else "linear"
    told = ", the model TOLD the rates (diagnostic)" if args.known_rates else ""
    if args.q_never is not None:
        told += f", prior P(q = 0) = {args.q_never} (diagnostic)"
    if args.budget != (DEFAULT_DETERMINISTIC_RUN_BUDGET if args.no_flaky else DEFAULT_RUN_BUDGET):
        told += f", run budget {args.budget}"
    if args.reproduce_runs != DEFAULT_REPRODUCE_RUNS:
        told += f", limits.reproduce_runs {args.reproduce_runs}"
    if args.older:
        told += ", the regression OLDER than the range (the good commit shows the error too)"
    if opts.bursts[1]:
        told += (f", failures in bursts of {opts.bursts[1]} runs starting at "
                 f"P {opts.bursts[0]} a run")
    first = f" (seeds {args.first_trial}-{args.first_trial + args.trials - 1})" if (
        args.first_trial) else ""
    settings = "git's search (--no-flaky)" if args.no_flaky else "default settings"
    print(f"{len(cells)} cells x {args.trials} trials{first}, {shape} histories, {settings} "
          f"(confidence 0.95){told}\n")
    print("| N | p | q | noise | right | other answers | runs mean | runs p95 | "
          "info limit | mean / limit | right at >= 0.5 / 0.8 / 0.95 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    bad_accuracy = bad_calibration = 0
    rows: dict[Cell, str] = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        # The slowest cells (no signal, or far from it) first: the grid ends sooner.
        slowest_first = sorted(cells, key=lambda c: -min(c.limit() * c.n, 1e12))
        seeds = range(args.first_trial, args.first_trial + args.trials)
        futures = [pool.submit(run_cell, (c, seeds, opts)) for c in slowest_first]
        for future in as_completed(futures):  # a row as soon as its cell is done
            cell, results, took = future.result()
            if args.save:
                save_trials(args.save, cell, seeds, results, opts)
            line, accurate, calibrated = row(cell, results, took)
            bad_accuracy += not accurate
            bad_calibration += not calibrated
            rows[cell] = line
            print(line, flush=True)
    print("\nIn grid order:\n")
    print("\n".join(rows[c] for c in cells))
    print(f"\ncells with p - q >= 0.2 below 95 % right: {bad_accuracy}; "
          f"cells not calibrated: {bad_calibration}; "
          f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
