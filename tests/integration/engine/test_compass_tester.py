"""The compass tester against aioresponses (the scheduler) and the real jobs table."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aioresponses import CallbackResult, aioresponses

from common.models import Job
from common.repository import Repository
from consumer.engine.compass_tester import CompassProfile, CompassTester, RetryPolicy
from consumer.engine.testers import TesterContext
from consumer.engine.verdicts import DifferentErrorPolicy, Verdict

SCHEDULER = "http://scheduler.test:3000"
SUBMIT = SCHEDULER + "/scheduler/v1/jobs/submit"
ERRID = "stderr.undefined_reference_to_foo"
PARAMS = {"program": "foo", "ss": {"x": 1}, "pp": {"t": "a"}, "os": "openeuler",
          "os_arch": "aarch64", "tbox_group": "vm-2p8g"}
BAD_COMMIT = "b" * 40
COMMIT = "c" * 40


def job(job_id: int, commit: str, *, stage: str = "finish", health: str = "success",
        readiness: str = "complete", errids: tuple[str, ...] = (), **params: Any) -> Job:
    data = {**PARAMS, **params, "upstream_commit": commit, "upstream_url": "https://g/r.git",
            "result_root": f"/result/{job_id}"}
    return Job(id=job_id, suite="pkgbuild", category="build", submit_time=job_id,
               job_stage=stage, job_health=health, job_data_readiness=readiness,
               errids=errids, data=data)


def make_tester(repo: Repository, *, timeout: float = 5.0,
                different: str = "skip") -> CompassTester:
    profile = CompassProfile(scheduler_url=SCHEDULER, account="bisect", token="s3cret",
                             timeout=timeout, poll_interval=0.05,
                             retry=RetryPolicy(max_attempts=3, base_delay=0.01))
    context = TesterContext(error_id=ERRID, bad_job_id="100",
                            different_error=DifferentErrorPolicy(different))
    return CompassTester(profile, context, repository=repo)


@pytest.fixture
async def jobs(repo: Repository) -> Repository:
    await repo.insert_jobs([job(100, BAD_COMMIT, health="fail", errids=(ERRID,))])
    return repo


def finishing(repo: Repository, finished: Job, bodies: list[dict[str, Any]]) -> Any:
    """A scheduler callback: answers with the job id and lets the job finish soon after."""

    def callback(url: Any, **kwargs: Any) -> CallbackResult:
        bodies.append(kwargs["json"])

        async def finish_later() -> None:
            await asyncio.sleep(0.15)
            await repo.insert_jobs([finished])

        asyncio.get_running_loop().create_task(finish_later())
        return CallbackResult(status=200, body=json.dumps(
            {"job_id": str(finished.id), "result_root": f"/result/{finished.id}"}))

    return callback


@pytest.mark.parametrize(
    ("row", "verdict"),
    [
        ({"health": "fail", "errids": (ERRID, "other.id")}, Verdict.BAD),
        ({"health": "success"}, Verdict.GOOD),
        ({"health": "fail", "errids": ("other.id",)}, Verdict.SKIP),
        ({"health": "success", "readiness": "incomplete"}, Verdict.SKIP),
        ({"health": "abort", "readiness": "norun"}, Verdict.SKIP),
        ({"stage": "abort_invalid", "health": "abort"}, Verdict.SKIP),
    ],
)
async def test_submits_with_the_commit_replaced_and_judges_the_job(
    jobs: Repository, tmp_path: Path, row: dict[str, Any], verdict: Verdict
) -> None:
    bodies: list[dict[str, Any]] = []
    compass = make_tester(jobs)
    try:
        with aioresponses() as mocked:
            mocked.post(SUBMIT, callback=finishing(jobs, job(201, COMMIT, **row), bodies))
            outcome = await compass.test(COMMIT, tmp_path)
    finally:
        await compass.aclose()
    assert outcome.verdict is verdict, outcome.detail
    assert outcome.job_id == "201" and outcome.result_root == "/result/201"
    assert not outcome.reused
    (body,) = bodies
    assert body["upstream_commit"] == COMMIT
    assert body["my_account"] == "bisect" and body["my_token"] == "s3cret"
    assert {k: body[k] for k in PARAMS} == PARAMS
    assert "result_root" not in body and "id" not in body


async def test_different_error_can_count_as_good(jobs: Repository, tmp_path: Path) -> None:
    compass = make_tester(jobs, different="good")
    try:
        with aioresponses() as mocked:
            mocked.post(SUBMIT, callback=finishing(
                jobs, job(202, COMMIT, health="fail", errids=("other.id",)), []))
            outcome = await compass.test(COMMIT, tmp_path)
    finally:
        await compass.aclose()
    assert outcome.verdict is Verdict.GOOD


async def test_reuses_a_finished_job_without_calling_the_scheduler(
    jobs: Repository, tmp_path: Path
) -> None:
    await jobs.insert_jobs([
        job(150, COMMIT, health="fail", errids=(ERRID,), tbox_group="other-box"),  # not same
        job(151, COMMIT, health="fail", errids=(ERRID,)),
    ])
    compass = make_tester(jobs)
    try:
        with aioresponses() as mocked:
            outcome = await compass.test(COMMIT, tmp_path)
            assert not mocked.requests
    finally:
        await compass.aclose()
    assert outcome.verdict is Verdict.BAD and outcome.reused and outcome.job_id == "151"


async def test_retries_a_503(jobs: Repository, tmp_path: Path) -> None:
    compass = make_tester(jobs)
    bodies: list[dict[str, Any]] = []
    try:
        with aioresponses() as mocked:
            mocked.post(SUBMIT, status=503, body="busy")
            mocked.post(SUBMIT, callback=finishing(jobs, job(203, COMMIT), bodies))
            outcome = await compass.test(COMMIT, tmp_path)
    finally:
        await compass.aclose()
    assert outcome.verdict is Verdict.GOOD and len(bodies) == 1


async def test_a_4xx_skips_the_commit_with_the_message(jobs: Repository, tmp_path: Path) -> None:
    compass = make_tester(jobs)
    try:
        with aioresponses() as mocked:
            mocked.post(SUBMIT, status=400, body="no such testbox")
            outcome = await compass.test(COMMIT, tmp_path)
    finally:
        await compass.aclose()
    assert outcome.verdict is Verdict.SKIP and "no such testbox" in outcome.detail


async def test_a_job_that_never_finishes_is_a_skip(jobs: Repository, tmp_path: Path) -> None:
    compass = make_tester(jobs, timeout=0.4)
    try:
        with aioresponses() as mocked:
            mocked.post(SUBMIT, callback=finishing(jobs, job(204, COMMIT, stage="running"), []))
            outcome = await compass.test(COMMIT, tmp_path)
    finally:
        await compass.aclose()
    assert outcome.verdict is Verdict.SKIP and "did not finish" in outcome.detail
    assert outcome.job_id == "204"


def test_profile_repr_hides_the_token() -> None:
    profile = CompassProfile(scheduler_url=SCHEDULER, account="a", token="s3cret")
    assert "s3cret" not in repr(profile)
