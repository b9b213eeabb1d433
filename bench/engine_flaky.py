"""Flaky tests: the engine's default search against ``git bisect run``, and P test slots.

    python bench/engine_flaky.py [--trials 20] [--commits 150] [--parallel-commits 1000 10000]

Part 1: generated repositories (``consumer/engine/synthetic.py``, flaky variant) whose test
shows the error on a bad commit only with probability p (0.3, 0.5) and shows an unrelated
error (``E_OTHER``, exit 1) on 25 % of all runs. Each trial has its own repository, culprit
and seed (``SYNTH_SEED``: both tools see the same reproducible script). The engine runs with
its default settings (no flag: confidence 0.95, different errors skip);
``git bisect run`` runs the same script between the same good and bad commits. Prints
accuracy, mean runs and the reported confidence per tool, and how often a result reported
at >= 0.95 was right.

Part 2: a deterministic test of fixed duration (``SYNTH_SLEEP=0.2``) on a 1,000-commit
repository (and a 10,000-commit one), bisected with 1 and with 4 test slots: wall time
and answer.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.logging import configure_logging
from consumer.engine.compare import git_bisect_run
from consumer.engine.result import BisectResult
from consumer.engine.runner import run_task
from consumer.engine.spec import parse_spec
from consumer.engine.synthetic import SyntheticRepo, make_repo

OTHER_RATE = 0.25
TARGET = 0.95


@dataclass(frozen=True)
class Trial:
    tool: str
    right: bool
    runs: int
    confidence: float | None  # None: the tool reports none


def spec_for(repo: SyntheticRepo, work: Path, env: dict[str, str], **limits: Any) -> Any:
    return parse_spec({
        "repo_url": str(repo.path),
        "bad_commit": repo.head,
        "good_commit": repo.root,
        "error_id": repo.error_id,
        "tester": {"kind": "command", "name": "bench", "command": ["./check.sh"],
                   "timeout": 60, "env": env},
        "limits": limits,
        "cache_dir": str(work / "cache" / "mirrors"),
        "work_dir": str(work / "cache" / "work"),
    })


async def one_trial(p: float, seed: int, commits: int, base: Path,
                    gate: asyncio.Semaphore) -> tuple[Trial, Trial]:
    async with gate:
        rng = random.Random(seed * 7919 + int(p * 1000))
        culprit = rng.randrange(2, commits - 1)
        work = base / f"p{p}-s{seed}"
        repo = await asyncio.to_thread(
            make_repo, work / "repo", commits, culprit, merges=commits // 15, seed=seed,
            flaky_p=p, other_rate=OTHER_RATE)
        env = {"SYNTH_SEED": str(seed), "SYNTH_COUNT_FILE": str(work / "engine.count")}
        result = await run_task(spec_for(repo, work, env), lambda e: None)
        engine = Trial("bisect engine", result.first_bad_commit == repo.culprit, result.runs,
                       result.confidence if result.first_bad_commit else None)
        try:
            answer = await asyncio.to_thread(
                git_bisect_run, repo.path, repo.head, repo.root, ["./check.sh"],
                work / "git.count", {"SYNTH_SEED": str(seed)})
            git = Trial("git bisect run", answer.first_bad == repo.culprit, answer.runs, None)
        except RuntimeError:  # e.g. "the merge base is bad": no answer at all
            runs = (work / "git.count").read_text().count("\n") if (
                work / "git.count").exists() else 0
            git = Trial("git bisect run", False, runs, None)
        return engine, git


def summarize(p: float, trials: list[Trial], total: int) -> str:
    right = sum(t.right for t in trials)
    runs = sum(t.runs for t in trials) / len(trials)
    confs = [t.confidence for t in trials if t.confidence is not None]
    conf = f"{sum(confs) / len(confs):.3f}" if confs else "none (claims certainty)"
    return (f"| p = {p}, other error 25 % | {trials[0].tool} | {right}/{total} "
            f"({right / total:.0%}) | {runs:.1f} | {conf} |")


async def flaky_part(trials: int, commits: int, base: Path) -> list[str]:
    lines = [f"### Flaky test, {commits}-commit repositories, {trials} seeded trials each", "",
             "| scenario | tool | right culprit | mean runs | mean reported confidence |",
             "|---|---|---|---|---|"]
    calibration: list[tuple[float, bool]] = []
    gate = asyncio.Semaphore(4)
    for p in (0.3, 0.5):
        pairs = await asyncio.gather(*(one_trial(p, s, commits, base, gate)
                                       for s in range(trials)))
        engine = [e for e, _ in pairs]
        git = [g for _, g in pairs]
        lines.append(summarize(p, engine, trials))
        lines.append(summarize(p, git, trials))
        calibration += [(t.confidence, t.right) for t in engine if t.confidence is not None]
    confident = [right for conf, right in calibration if conf >= TARGET]
    rate = sum(confident) / len(confident) if confident else 0.0
    lines += ["", f"Engine results reported at confidence >= {TARGET}: {len(confident)} of "
              f"{2 * trials}; right: {sum(confident)} ({rate:.1%})."]
    return lines


async def timed(repo: SyntheticRepo, work: Path, slots: int) -> tuple[float, BisectResult]:
    spec = spec_for(repo, work / f"slots{slots}", {"SYNTH_SLEEP": "0.2"}, slots=slots)
    started = time.monotonic()
    result = await run_task(spec, lambda e: None)
    return time.monotonic() - started, result


async def parallel_part(sizes: list[int], base: Path) -> list[str]:
    lines = ["", "### Test slots: deterministic test of 0.2 s", "",
             "| commits | slots | answer | runs | wall time (s) | vs 1 slot | same answer |",
             "|---|---|---|---|---|---|---|"]
    for commits in sizes:
        culprit = int(commits * 0.613)
        repo = await asyncio.to_thread(make_repo, base / f"parallel{commits}", commits, culprit)
        wall1, one = await timed(repo, base / str(commits), 1)
        wall4, four = await timed(repo, base / str(commits), 4)
        same = one.first_bad_commit == four.first_bad_commit == repo.culprit
        for slots, wall, result in ((1, wall1, one), (4, wall4, four)):
            answer = repo.index(result.first_bad_commit) if result.first_bad_commit else None
            lines.append(f"| {commits} | {slots} | #{answer} | {result.runs} | {wall:.2f} | "
                         f"{wall / wall1:.2f} | {'yes' if same else 'NO'} |")
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--commits", type=int, default=150)
    parser.add_argument("--parallel-commits", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--skip-flaky", action="store_true")
    args = parser.parse_args()
    configure_logging("bench", level="error")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bisect-flaky-") as tmp:
        base = Path(tmp)
        lines = [] if args.skip_flaky else await flaky_part(args.trials, args.commits, base)
        lines += await parallel_part(args.parallel_commits, base)
    print("\n".join(lines))
    print(f"\n(generated and bisected in {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    asyncio.run(main())
