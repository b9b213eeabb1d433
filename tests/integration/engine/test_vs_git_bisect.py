"""The engine and ``git bisect run`` on the same generated repositories: same answers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from consumer.engine.adaptive import deterministic_run_bound
from consumer.engine.compare import Answer, engine_answer, git_bisect_run
from consumer.engine.synthetic import SyntheticRepo, make_repo, plan_history

N = 1000
# The bad commit's check, the halving and three fresh retests each side of the boundary.
BOUND = deterministic_run_bound(N)


async def _both(tmp_path: Path, bad_index: int, **kw: Any) -> tuple[SyntheticRepo, Answer, Answer]:
    repo = make_repo(tmp_path / "repo", N, bad_index, **kw)
    command = ["./check.sh"]
    git = git_bisect_run(repo.path, repo.head, repo.root, command, tmp_path / "count")
    engine, _ = await engine_answer(repo.path, repo.head, repo.root, command,
                                    cache_dir=tmp_path / "cache", error_id=repo.error_id)
    return repo, git, engine


async def test_linear_1000(tmp_path: Path) -> None:
    repo, git, engine = await _both(tmp_path, 613)
    assert engine.first_bad == git.first_bad == repo.culprit
    assert engine.runs <= BOUND


@pytest.mark.parametrize("seed", [7, 11])
async def test_merge_heavy_1000(tmp_path: Path, seed: int) -> None:
    parents = plan_history(N, merges=150, seed=seed)
    # A commit on a side branch, so the merges matter.
    culprit = next(i for i in range(480, N) if len(parents[i]) == 1 and parents[i][0] != i - 1)
    repo, git, engine = await _both(tmp_path, culprit, merges=150, seed=seed)
    assert engine.first_bad == git.first_bad == repo.culprit
    assert engine.runs <= BOUND


async def test_skipped_range_right_before_the_culprit(tmp_path: Path) -> None:
    repo, git, engine = await _both(tmp_path, 613, skip_range=range(608, 613))
    expected = {repo.shas[i] for i in range(608, 614)}
    assert engine.first_bad is None and git.first_bad is None
    assert set(engine.candidates) == set(git.candidates) == expected


async def test_skipped_range_right_after_the_culprit(tmp_path: Path) -> None:
    repo, git, engine = await _both(tmp_path, 613, skip_range=range(614, 620))
    assert engine.first_bad == git.first_bad == repo.culprit


def _on_a_branch(merges: int, seed: int) -> int:
    parents = plan_history(N, merges=merges, seed=seed)
    return next(i for i in range(480, N) if len(parents[i]) == 1 and parents[i][0] != i - 1)


@pytest.mark.parametrize(("culprit", "history"), [
    (613, {}), (1, {}), (N - 1, {}), (_on_a_branch(150, 7), {"merges": 150, "seed": 7})])
async def test_git_search_keeps_issue_14s_bound_and_claims_no_certainty(
        tmp_path: Path, culprit: int, history: dict[str, Any]) -> None:
    # --no-flaky: the bad commit's check, git's halving and one fresh run each side of the
    # boundary (a culprit with one parent). Those runs are also what a flaky test gives when
    # its runs agree by luck, so they name the commit git names at a confidence below the
    # default's 0.95.
    repo = make_repo(tmp_path / "repo", N, culprit, **history)
    git = git_bisect_run(repo.path, repo.head, repo.root, ["./check.sh"], tmp_path / "count")
    off, _ = await engine_answer(repo.path, repo.head, repo.root, ["./check.sh"],
                                 cache_dir=tmp_path / "cache", error_id=repo.error_id,
                                 flaky=False)
    assert off.first_bad == git.first_bad == repo.culprit
    assert off.runs <= math.ceil(math.log2(N)) + 3
    assert off.confidence is not None and 0 < off.confidence < 0.95
