"""The bisection engine side by side with ``git bisect run`` on generated repositories.

    python bench/engine_vs_git_bisect.py [--commits 1000]

Prints a markdown table: each tool's answer and how many times it ran the test. The engine
runs twice, with its default settings and with ``--no-flaky`` (``limits.flaky`` false, git's
search for a test known to be deterministic); its counts include its check of the bad commit
and the boundary verification (default: three fresh retests of the culprit and three of its
parent; ``--no-flaky``: one each), and its confidence is printed beside them. git bisect run
is given the same good and bad commits and tests neither. Two bounds are checked: issue 14's
``ceil(log2 N) + 3`` and the default search's own
(:func:`consumer.engine.adaptive.deterministic_run_bound`, ``ceil(log2 N) + 7``)."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.logging import configure_logging
from consumer.engine import simulate
from consumer.engine.adaptive import deterministic_run_bound, usable_counts
from consumer.engine.changepoint import ChangePoint
from consumer.engine.compare import Answer, engine_answer, git_bisect_run
from consumer.engine.search import DeterministicSearch
from consumer.engine.synthetic import SyntheticRepo, make_repo, plan_history
from consumer.engine.verdicts import Outcome, Verdict


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
        f"| scenario ({n} commits) | expected | engine answer | engine runs | confidence | "
        f"engine <= {bound} | engine <= {own} | `--no-flaky` runs | confidence | "
        f"`--no-flaky` <= {bound} | git bisect run answer | git runs | same answer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="bisect-bench-") as tmp:
        for k, scenario in enumerate(scenarios(n)):
            base = Path(tmp) / str(k)
            repo = make_repo(base / "repo", n, scenario.bad_index, **scenario.repo_args)
            git = git_bisect_run(repo.path, repo.head, repo.root, ["./check.sh"], base / "count")
            engine, _ = await engine_answer(repo.path, repo.head, repo.root, ["./check.sh"],
                                            cache_dir=base / "cache", error_id=repo.error_id)
            off, _ = await engine_answer(repo.path, repo.head, repo.root, ["./check.sh"],
                                         cache_dir=base / "cache", error_id=repo.error_id,
                                         flaky=False)
            same = all((a.first_bad, set(a.candidates)) == (git.first_bad, set(git.candidates))
                       for a in (engine, off))
            rows.append(
                f"| {scenario.name} | #{scenario.bad_index} | {describe(engine, repo)} | "
                f"{engine.runs} | {_confidence(engine)} | "
                f"{'yes' if engine.runs <= bound else 'no'} | "
                f"{'yes' if engine.runs <= own else 'no'} | {off.runs} | {_confidence(off)} | "
                f"{'yes' if off.runs <= bound else 'no'} | {describe(git, repo)} | {git.runs} | "
                f"{'yes' if same else '**no**'} |"
            )
    return "\n".join(rows)


def _confidence(answer: Answer) -> str:
    return "-" if answer.confidence is None or not answer.first_bad else f"{answer.confidence:.2f}"


def what_the_runs_tell(sizes: tuple[int, ...] = (100, 1000), most: int = 5) -> str:
    """P(culprit) by the default search's model, after the bad commit's check, git's halving
    and ``k`` fresh runs each side of the boundary, all the runs of a deterministic test."""
    rows = ["| N | fresh runs a side | runs | runs - ceil(log2 N) | P(culprit) |",
            "|---|---|---|---|---|"]
    for n in sizes:
        culprit = int(n * 0.613)
        dag, is_after = simulate.history(simulate.Scenario(n, culprit, 1.0, 0.0))
        index = {simulate.name(i): i for i in range(-1, n)}
        bad = simulate.name(n - 1)

        def outcome(commit: str, is_after: Callable[[int], bool] = is_after,
                    index: dict[str, int] = index) -> Outcome:
            return Outcome.of(Verdict.BAD if is_after(index[commit]) else Verdict.GOOD)

        halving = DeterministicSearch(dag, bad)
        runs = [bad]
        while picks := halving.next_commits(1):
            halving.record(picks[0], outcome(picks[0]))
            runs.append(picks[0])
        found = halving.result().first_bad
        assert found is not None
        sides = [found, *dag.all_parents(found)]
        for k in range(most + 1):
            model = ChangePoint(dag, bad, [simulate.GOOD])
            for commit in runs + sides * k:
                model.record(commit, *usable_counts(outcome(commit)))
            total = len(runs) + len(sides) * k
            rows.append(f"| {n} | {k} | {total} | +{total - math.ceil(math.log2(n))} | "
                        f"{model.probability(found):.3f} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=1000)
    args = parser.parse_args()
    configure_logging("engine-bench", level="warning")  # logs to stderr, the table to stdout
    started = time.monotonic()
    print(asyncio.run(run(args.commits)))
    print("\nWhat a deterministic test's runs tell a model that admits flaky tests:\n")
    print(what_the_runs_tell())
    print(f"\n(generated and bisected in {time.monotonic() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
