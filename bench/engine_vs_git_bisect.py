"""The bisection engine side by side with ``git bisect run`` on generated repositories.

    python bench/engine_vs_git_bisect.py [--commits 1000]

Prints a markdown table: each tool's answer and how many times it ran the test. The engine
runs with its default settings; its count includes its check of the bad commit and the
boundary verification (three fresh retests of the culprit and three of its parent); git
bisect run is given the same good and bad commits and tests neither. Two bounds are
checked: issue 14's ``ceil(log2 N) + 3`` and the engine's own
(:func:`consumer.engine.adaptive.deterministic_run_bound`, ``ceil(log2 N) + 7``).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.logging import configure_logging
from consumer.engine.adaptive import deterministic_run_bound
from consumer.engine.compare import Answer, engine_answer, git_bisect_run
from consumer.engine.synthetic import SyntheticRepo, make_repo, plan_history


@dataclass(frozen=True)
class Scenario:
    name: str
    bad_index: int
    repo_args: dict[str, Any] = field(default_factory=dict)


def scenarios(n: int) -> list[Scenario]:
    merges = n // 7
    parents = plan_history(n, merges, seed=7)
    side = next(i for i in range(n // 2, n) if len(parents[i]) == 1 and parents[i][0] != i - 1)
    culprit = int(n * 0.613)
    return [
        Scenario("linear", culprit),
        Scenario("linear, first commit bad", 1),
        Scenario("linear, last commit bad", n - 1),
        Scenario(f"merge-heavy ({merges} merges), culprit on a branch", side,
                 {"merges": merges, "seed": 7}),
        Scenario("skipped range (5) right before the culprit", culprit,
                 {"skip_range": range(culprit - 5, culprit)}),
        Scenario("skipped range (6) right after the culprit", culprit,
                 {"skip_range": range(culprit + 1, culprit + 7)}),
        Scenario("skipped range (10) far from the culprit", culprit,
                 {"skip_range": range(n // 2 - 5, n // 2 + 5)}),
    ]


def describe(answer: Answer, repo: SyntheticRepo) -> str:
    if answer.first_bad:
        return f"#{repo.index(answer.first_bad)} `{answer.first_bad[:10]}`"
    indexes = sorted(repo.index(c) for c in answer.candidates)
    return "one of #" + ", #".join(map(str, indexes))


async def run(n: int) -> str:
    bound = math.ceil(math.log2(n)) + 3
    own = deterministic_run_bound(n)
    rows = [
        f"| scenario ({n} commits) | expected | engine answer | engine runs | "
        f"git bisect run answer | git runs | same answer | engine <= {bound} | "
        f"engine <= {own} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="bisect-bench-") as tmp:
        for k, scenario in enumerate(scenarios(n)):
            base = Path(tmp) / str(k)
            repo = make_repo(base / "repo", n, scenario.bad_index, **scenario.repo_args)
            git = git_bisect_run(repo.path, repo.head, repo.root, ["./check.sh"], base / "count")
            engine, _ = await engine_answer(repo.path, repo.head, repo.root, ["./check.sh"],
                                            cache_dir=base / "cache", error_id=repo.error_id)
            same = (engine.first_bad, set(engine.candidates)) == (git.first_bad,
                                                                  set(git.candidates))
            rows.append(
                f"| {scenario.name} | #{scenario.bad_index} | {describe(engine, repo)} | "
                f"{engine.runs} | {describe(git, repo)} | {git.runs} | "
                f"{'yes' if same else '**no**'} | {'yes' if engine.runs <= bound else 'no'} | "
                f"{'yes' if engine.runs <= own else 'no'} |"
            )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=1000)
    args = parser.parse_args()
    configure_logging("engine-bench", level="warning")  # logs to stderr, the table to stdout
    started = time.monotonic()
    print(asyncio.run(run(args.commits)))
    print(f"\n(generated and bisected in {time.monotonic() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
