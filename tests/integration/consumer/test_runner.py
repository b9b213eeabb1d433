"""One bisection subprocess against a fake engine, recording into the real database."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from common.models import FinishOutcome, Verdict
from common.repository import Repository
from consumer.recorder import Recorder, RecorderScope
from consumer.runner import BisectionRun, RunResult, decide
from consumer.settings import TimeoutAction
from tests.integration.consumer.fakes import pid_alive, wait_until, write_engine

TASK_ID = 4242


def spec(**tester: Any) -> dict[str, Any]:
    return {"task_id": TASK_ID, "repo_url": "/srv/repo.git", "bad_commit": "bad0",
            "good_commit": None, "error_id": "err.x",
            "tester": {"kind": "command", "name": "fake", "command": ["true"], **tester},
            "limits": {}, "known_verdicts": [], "cache_dir": "/tmp/c", "work_dir": "/tmp/w"}


def make_run(repo: Repository, tmp_path: Path, *, timeout_s: float = 30.0,
             **tester: Any) -> tuple[BisectionRun, Recorder]:
    recorder = Recorder(repo, RecorderScope(task_id=TASK_ID, attempt=2,
                                            repo_url="/srv/repo.git", tester_fingerprint="fp",
                                            error_id="err.x", bad_job_id="job1"))
    run = BisectionRun(write_engine(tmp_path), spec(**tester), recorder, timeout_s=timeout_s,
                       kill_grace_s=1.0, work_dir=str(tmp_path / "work" / "4242-2"))
    return run, recorder


def finish_of(result: RunResult) -> tuple[FinishOutcome | None, str]:
    finish = decide(result, work_dir="/w", timeout_action=TimeoutAction.FAIL)
    return finish.outcome, finish.reason


async def test_found_records_steps_verdicts_progress(repo: Repository, tmp_path: Path) -> None:
    spec_out = tmp_path / "spec.json"
    run, recorder = make_run(repo, tmp_path, fp="fp", spec_out=str(spec_out))
    result = await run.run()
    assert result.exit_code == 0 and result.result is not None
    assert finish_of(result) == (FinishOutcome.COMPLETED, "")
    assert json.loads(spec_out.read_text())["bad_commit"] == "bad0"
    steps = await repo.steps_of_task(TASK_ID)
    assert [(s.attempt, s.seq, s.commit, s.verdict, s.reused) for s in steps] == [
        (2, 1, "c2", Verdict.BAD, False), (2, 2, "c1", Verdict.GOOD, True)]
    assert steps[0].duration_ms == 500 and steps[0].job_id == "job-c2"
    verdicts = await repo.verdicts_in_scope("/srv/repo.git", "fp", "err.x")
    assert [(v.commit, v.verdict, v.task_id) for v in verdicts] == [("c2", Verdict.BAD, TASK_ID)]
    await recorder.record_regression("/srv/repo.git")
    culprits = await repo.culprits_of("err.x")
    assert [(c.first_bad_commit, c.bisect_task_id) for c in culprits] == [("c2", TASK_ID)]
    assert not (tmp_path / "work" / "4242-2").exists()


async def test_garbage_is_skipped(repo: Repository, tmp_path: Path) -> None:
    run, _ = make_run(repo, tmp_path, mode="garbage")
    result = await run.run()
    assert finish_of(result) == (FinishOutcome.COMPLETED, "")
    seqs = [s.seq for s in await repo.steps_of_task(TASK_ID)]
    assert seqs == [1, 2, 7]  # the split line was joined; the invalid step was dropped


async def test_flood_is_survived_and_progress_ends_current(repo: Repository,
                                                           tmp_path: Path) -> None:
    run, _ = make_run(repo, tmp_path, mode="flood")
    result = await run.run()
    assert finish_of(result) == (FinishOutcome.COMPLETED, "")
    assert len(await repo.steps_of_task(TASK_ID)) == 2


async def test_exit_without_result_fails_with_last_stderr(repo: Repository,
                                                          tmp_path: Path) -> None:
    run, _ = make_run(repo, tmp_path, mode="crash")
    result = await run.run()
    assert finish_of(result) == (
        FinishOutcome.FAILED, "engine exited 3 without a result: RuntimeError: git exploded")
    assert [s.commit for s in await repo.steps_of_task(TASK_ID)] == ["c5"]


async def test_ambiguous_fails_with_candidates(repo: Repository, tmp_path: Path) -> None:
    run, _ = make_run(repo, tmp_path, mode="ambiguous")
    assert finish_of(await run.run()) == (FinishOutcome.FAILED, "ambiguous: 2 candidates c3 c4")


async def test_timeout_kills_the_process_group(repo: Repository, tmp_path: Path) -> None:
    child_file = tmp_path / "child.pid"
    run, _ = make_run(repo, tmp_path, timeout_s=1.0, mode="stubborn", child=str(child_file))
    started = time.monotonic()
    result = await run.run()
    elapsed = time.monotonic() - started
    assert result.timed_out
    assert finish_of(result) == (FinishOutcome.FAILED, "timeout")
    assert elapsed < 1.0 + 1.0 + 3.0  # timeout + kill grace + slack
    child = int(child_file.read_text())
    assert await wait_until(lambda: not pid_alive(child), 5)
    assert [s.commit for s in await repo.steps_of_task(TASK_ID)] == ["c9"]


@pytest.mark.parametrize(("reason", "finish"), [
    ("cancelled", (FinishOutcome.RELEASED, "cancelled")),  # reported: the producer cancels it now
    ("lease_lost", (None, "lease_lost")),  # not reported: the task belongs to another now
])
async def test_stop_kills_at_once(repo: Repository, tmp_path: Path, reason: str,
                                  finish: tuple[FinishOutcome | None, str]) -> None:
    run, _ = make_run(repo, tmp_path, mode="hang")
    job = asyncio.create_task(run.run())
    assert await wait_until(lambda: run.pid is not None, 10)
    await asyncio.sleep(0.3)
    run.stop(reason)
    result = await asyncio.wait_for(job, 5)
    assert finish_of(result) == finish
    assert run.pid is not None and not pid_alive(run.pid)


async def test_cancelling_the_run_kills_the_engine(repo: Repository, tmp_path: Path) -> None:
    run, _ = make_run(repo, tmp_path, mode="hang")
    job = asyncio.create_task(run.run())
    assert await wait_until(lambda: run.pid is not None, 10)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert run.pid is not None and not pid_alive(run.pid)
