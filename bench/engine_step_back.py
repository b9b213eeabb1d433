"""A regression older than the range, through the real engine: the given good commit is bad.

    nice -n 5 python bench/engine_step_back.py [--trials 20] [--commits 150] [--p 1 0.8 0.5]
        [--other 0 0.25] [--merges] [--jobs 4] [--no-good]

Issue 14: "Test the given good commit. If it shows the error, the outcome is a clear
``good_is_bad``. Where that is cheap, extend the search to older commits and find the real
culprit." The calibration grid's ``--older`` (``bench/engine_calibration.py``) measures
the first half in simulation, where no older commit exists. This bench runs the whole
flow: each trial generates a repository (``consumer/engine/synthetic.py``, the flaky
variant for p < 1) whose culprit lies in its first third, gives the engine a good commit
1-30 commits *after* the culprit, and runs :func:`consumer.engine.runner.run_task` with
default settings. The search over the given range should end ``good_is_bad``, step back
from the good commit (1, 2, 4, ... first-parent commits) to an older good one, and name
the culprit over the longer range, with every run made so far.

``--no-good`` gives no good commit at all, as compass-ci's jobs do: the engine steps back
from the bad commit to find one, and a flaky test can fool that walk the same way.

Per cell (p, the unrelated-error rate): how often the culprit was named, how often the
answer stayed ``good_is_bad`` or named another commit, the runs (mean and max), and how
many answers at >= 0.95 were right.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.logging import configure_logging
from consumer.engine.result import Status
from consumer.engine.runner import run_task
from consumer.engine.spec import parse_spec
from consumer.engine.synthetic import make_repo

TARGET = 0.95
FURTHEST = 30  # the given good commit lies 1 to this many commits after the culprit


@dataclass(frozen=True)
class Trial:
    status: str
    right: bool  # the culprit named
    runs: int
    confidence: float
    stepped_back: bool  # the engine searched a second, longer range


async def one_trial(p: float, other: float, seed: int, commits: int, merges: bool,
                    base: Path, gate: asyncio.Semaphore, no_good: bool = False) -> Trial:
    async with gate:
        rng = random.Random(f"{p}-{other}-{seed}")
        culprit = rng.randrange(2, commits // 3)
        work = base / f"p{p}-o{other}-s{seed}"
        repo = await asyncio.to_thread(
            make_repo, work / "repo", commits, culprit,
            merges=commits // 15 if merges else 0, seed=seed,
            # the flaky script draws the unrelated errors too, at p = 1 as well
            flaky_p=None if p >= 1.0 and not other else p, other_rate=other)
        # A good commit that shows the error: a descendant of the culprit, not far after it.
        shown = [i for i in range(culprit + 1, min(culprit + FURTHEST, commits - 1) + 1)
                 if repo.states[i] == "bad"]
        good = repo.shas[rng.choice(shown)]
        spec = parse_spec({
            "repo_url": str(repo.path), "bad_commit": repo.head,
            "good_commit": None if no_good else good,
            "error_id": repo.error_id,
            "tester": {"kind": "command", "name": "bench", "command": ["./check.sh"],
                       "timeout": 60, "env": {"SYNTH_SEED": str(seed),
                                              "SYNTH_COUNT_FILE": str(work / "runs.count")}},
            "cache_dir": str(work / "cache" / "mirrors"),
            "work_dir": str(work / "cache" / "work"),
        })
        ranges: list[object] = []
        result = await run_task(spec, lambda e: ranges.append(e) if e.get("event") == "range"
                                else None)
        return Trial(result.status.value, result.first_bad_commit == repo.culprit,
                     result.runs, result.confidence, len(ranges) > 1)


def row(p: float, other: float, trials: list[Trial]) -> str:
    n = len(trials)
    right = sum(t.right for t in trials)
    wrong = sum(t.status == Status.FOUND and not t.right for t in trials)
    still = sum(t.status == Status.GOOD_IS_BAD for t in trials)
    rest = n - right - wrong - still
    back = sum(t.stepped_back for t in trials)
    runs = [t.runs for t in trials]
    claimed = [t for t in trials if t.status in (Status.FOUND, Status.GOOD_IS_BAD)
               and t.confidence >= TARGET]
    # good_is_bad is true here too (the given good commit is bad), but it is not the culprit
    sure = sum(t.right or t.status == Status.GOOD_IS_BAD for t in claimed)
    return (f"| {p} | {other:.0%} | {n} | {right} | {wrong} | {still} | {rest} | {back} | "
            f"{statistics.mean(runs):.1f} | {max(runs)} | {sure}/{len(claimed)} |")


async def run(args: argparse.Namespace, base: Path) -> list[str]:
    lines = ["| p | unrelated errors | trials | culprit named | other commit named | "
             "good_is_bad | other answers | stepped back | runs mean | runs max | "
             f"right at >= {TARGET} |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    gate = asyncio.Semaphore(args.jobs)
    for p in args.p:
        for other in args.other:
            trials = await asyncio.gather(*(
                one_trial(p, other, seed, args.commits, args.merges, base, gate, args.no_good)
                for seed in range(args.trials)))
            lines.append(row(p, other, list(trials)))
            print(lines[-1], flush=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--commits", type=int, default=150)
    parser.add_argument("--p", type=float, nargs="+", default=[1.0, 0.8, 0.5],
                        help="rate the error shows at on a bad commit")
    parser.add_argument("--other", type=float, nargs="+", default=[0.0, 0.25],
                        help="rate of runs ending in an unrelated error")
    parser.add_argument("--merges", action="store_true", help="a merge every 15 commits")
    parser.add_argument("--jobs", type=int, default=4, help="bisections at once")
    parser.add_argument("--no-good", action="store_true",
                        help="no good commit given: the engine finds one (compass-ci's case)")
    args = parser.parse_args()
    if args.commits < 3 * 3:
        parser.error("--commits: at least 9 (the culprit lies in the first third)")
    if any(not 0.0 < p <= 1.0 for p in args.p):
        parser.error("--p: rates in (0, 1]")
    if any(not 0.0 <= o < 1.0 for o in args.other):
        parser.error("--other: rates in [0, 1)")
    configure_logging("bench", level="error")
    started = time.monotonic()
    print(f"{args.trials} trials a cell, {args.commits}-commit "
          f"{'merge-heavy' if args.merges else 'linear'} repositories, default settings; "
          + ("no good commit given\n" if args.no_good
             else f"the given good commit 1-{FURTHEST} commits after the culprit\n"))
    with tempfile.TemporaryDirectory(prefix="bisect-step-back-") as tmp:
        lines = asyncio.run(run(args, Path(tmp)))
    print("\nIn order:\n\n" + "\n".join(lines))
    print(f"\n({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
