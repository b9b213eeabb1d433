"""The compass tester against a faithful fake of compass-ci's scheduler and the real jobs
table (compact layout)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aioresponses import aioresponses

from common.compass_job import CompassJob, job_row
from common.repository import Repository
from consumer.engine import errors as engine_errors
from consumer.engine.compass_tester import (
    CompassProfile,
    CompassTester,
    RetryPolicy,
    judge,
)
from consumer.engine.testers import TesterContext
from consumer.engine.verdicts import Verdict
from tests.fake_compass import make_fixture_repo, serving
from tests.producer_support import compass_job_row

ERRID = "makepkg.eid.src/foo.c:error:implicit-declaration-of-function"
OTHER = "makepkg.eid.src/bar.c:warning:unused-variable"
ACCOUNT = {"my_account": "bisect", "my_email": "bisect@example.com", "my_name": "bisect",
           "my_token": "s3cret"}


@pytest.fixture
async def compass(repo: Repository, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """A fixture repository (regression at commit 6 of 10), the bad job at its last commit,
    and the fake scheduler serving on loopback."""
    source, commits = make_fixture_repo(tmp_path, 10, 6, ERRID)
    bad = compass_job_row(100, ERRID, repo=str(source), commit=commits[-1])
    await repo.insert_job_rows([bad])
    async with serving(repo) as (fake, url):
        yield {"fake": fake, "url": url, "commits": commits, "source": source}


def make_tester(repo: Repository, url: str, *, timeout: float = 20.0,
                account: dict[str, str] | None = None, attempts: int = 3) -> CompassTester:
    profile = CompassProfile(scheduler_url=url, account=ACCOUNT if account is None else account,
                             timeout=timeout, poll_interval=0.02,
                             retry=RetryPolicy(max_attempts=attempts, base_delay=0.01))
    context = TesterContext(error_id=ERRID, bad_job_id="100")
    return CompassTester(profile, context, repository=repo)


async def test_reruns_the_bad_job_at_each_commit_and_judges_by_the_error_id(
        repo: Repository, compass: dict[str, Any], tmp_path: Path) -> None:
    tester = make_tester(repo, compass["url"])
    commits = compass["commits"]
    try:
        good = await tester.test(commits[2], tmp_path)
        bad = await tester.test(commits[7], tmp_path)
    finally:
        await tester.aclose()
    assert good.verdict is Verdict.GOOD and bad.verdict is Verdict.BAD, (good, bad)
    assert not good.reused and good.runs == 1 and bad.bad_runs == 1
    first, second = compass["fake"].submitted
    # The commit is set where the bad job selected it (and its pp mirror), nothing else moves.
    assert first["program"]["makepkg"]["commit"] == commits[2]
    assert first["pp"]["makepkg"]["commit"] == commits[2]
    assert first["program"]["makepkg"]["_url"] == str(compass["source"])
    assert first["bad_job_id"] == "100"
    assert {k: first[k] for k in ACCOUNT} == ACCOUNT
    for stripped in ("id", "errid", "stats", "job_stage", "job_health", "result_root",
                     "istage", "full_text_kv"):
        assert stripped not in first
    assert second["program"]["makepkg"]["commit"] == commits[7]
    # The new jobs' rows are compass-ci's final rows, marked as bisection reruns.
    job = await repo.get_job(int(bad.job_id or 0))
    assert job is not None and job.data_settled and job.submitted_by_bisect
    assert job.errids == (ERRID,) and job.commit == commits[7]


async def test_reuses_a_finished_job_with_the_same_parameters(
        repo: Repository, compass: dict[str, Any], tmp_path: Path) -> None:
    commit = compass["commits"][8]
    source = str(compass["source"])
    other_box = compass_job_row(150, ERRID, repo=source, commit=commit)
    other_box["j"] = other_box["j"].replace('"tbox_group":"dc"', '"tbox_group":"vm-2p8g"')
    await repo.insert_job_rows([other_box, compass_job_row(151, ERRID, repo=source,
                                                           commit=commit)])
    tester = make_tester(repo, compass["url"])
    try:
        outcome = await tester.test(commit, tmp_path)
        again = await tester.test(commit, tmp_path)  # a retest needs a new job
    finally:
        await tester.aclose()
    assert outcome.reused and outcome.job_id == "151" and outcome.verdict is Verdict.BAD
    assert not again.reused and again.verdict is Verdict.BAD
    assert len(compass["fake"].submitted) == 1


async def test_a_missing_account_field_ends_the_bisection_with_the_schedulers_message(
        repo: Repository, compass: dict[str, Any], tmp_path: Path) -> None:
    tester = make_tester(repo, compass["url"], account={"my_account": "bisect"}, attempts=2)
    try:
        with pytest.raises(engine_errors.TesterError, match="Missing required job key: 'my_email'"):
            await tester.test(compass["commits"][1], tmp_path)
    finally:
        await tester.aclose()


async def test_a_4xx_skips_the_commit_with_the_message(repo: Repository,
                                                        tmp_path: Path) -> None:
    await repo.insert_job_rows([compass_job_row(100, ERRID)])
    tester = make_tester(repo, "http://scheduler.test:3000")
    try:
        with aioresponses() as mocked:
            mocked.post("http://scheduler.test:3000/scheduler/v1/jobs/submit", status=400,
                        body='[{"message":"[\\"pkg_data\\"]","errcode":"RETRY_UPLOAD"}]')
            outcome = await tester.test("c" * 40, tmp_path)
    finally:
        await tester.aclose()
    assert outcome.verdict is Verdict.SKIP and "RETRY_UPLOAD" in outcome.detail


async def test_a_job_that_never_settles_is_a_skip(repo: Repository, tmp_path: Path) -> None:
    await repo.insert_job_rows([compass_job_row(100, ERRID)])
    tester = make_tester(repo, "http://scheduler.test:3000", timeout=0.3)
    try:
        with aioresponses() as mocked:
            mocked.post("http://scheduler.test:3000/scheduler/v1/jobs/submit",
                        body='[{"job_id":"204","message":"","job_state":"submit"}]')
            # compass-ci keeps a timed-out job at istage 1 (§2.2).
            await repo.insert_job_rows([compass_job_row(204, "", stage="dispatch")])
            outcome = await tester.test("c" * 40, tmp_path)
    finally:
        await tester.aclose()
    assert outcome.verdict is Verdict.SKIP and "did not finish" in outcome.detail
    assert outcome.job_id == "204"


@pytest.mark.parametrize(
    ("row", "verdict"),
    [
        ({"errids": f"{ERRID} {OTHER}"}, Verdict.BAD),
        ({"errids": "", "health": "success"}, Verdict.GOOD),
        ({"errids": OTHER, "health": "fail"}, Verdict.GOOD),
        ({"errids": ERRID, "readiness": "incomplete"}, Verdict.SKIP),
        ({"errids": "", "stage": "cancel", "health": "cancel"}, Verdict.SKIP),
        ({"errids": "", "stage": "abort_wait", "health": "abort_wait"}, Verdict.SKIP),
        ({"errids": OTHER, "health": "timeout_running"}, Verdict.SKIP),
        ({"errids": OTHER, "health": "abort_provider"}, Verdict.SKIP),
    ],
)
def test_judge(row: dict[str, Any], verdict: Verdict) -> None:
    job = CompassJob.from_row(compass_job_row(7, row.pop("errids"), **row))
    assert judge(job, ERRID)[0] is verdict


def test_a_test_job_is_rerun_at_its_ss_package_commit() -> None:
    doc = {"suite": "ltp", "tbox_group": "vm", "os": "openeuler", "os_version": "24.03",
           "ss": {"linux": {"_url": "https://git.example/linux.git", "commit": "a" * 40}},
           "pp": {"ltp": {"test": "syscalls"}}}
    job = CompassJob.from_row(job_row(9, doc, stage="finish", health="fail",
                                      readiness="complete", errids=("e",)))
    assert job.git_url == "https://git.example/linux.git"
    assert job.source is not None and job.source.commit_key == "ss.linux.commit"
    rerun = job.rerun_document("b" * 40, ACCOUNT)
    assert rerun["ss"]["linux"]["commit"] == "b" * 40 and rerun["bad_job_id"] == "9"
    assert rerun["pp"] == {"ltp": {"test": "syscalls"}}


def test_profile_repr_hides_the_token() -> None:
    profile = CompassProfile(scheduler_url="http://s", account=ACCOUNT)
    assert "s3cret" not in repr(profile)
