"""Job discovery on the real database."""

from __future__ import annotations

import asyncio
import random

from common.models import Job, Regression, TaskStatus
from common.repository import Repository, TaskFilter
from common.settings import DbUrl
from producer.discovery import JobDiscovery
from producer.writer import TaskStateWriter
from tests.producer_support import failed_job, producer_settings, running_producer

WHITELIST = ["last_state.test.pkgbuild.exit_code.1", "stderr.undefined_reference_to_foo",
             "Case.Sensitive.Err"]
OTHER = ["stderr.warning_unused", "case.sensitive.err", "last_state.test.ltp.exit_code.2"]


async def _whitelist(repo: Repository) -> None:
    for errid in WHITELIST:
        await repo.upsert_regression(Regression(errid=errid, category="build"))
    await repo.upsert_regression(Regression(errid="not.valid.anymore", valid=False))


def _seed(start: int, count: int, rng: random.Random) -> tuple[list[Job], set[tuple[str, str]]]:
    jobs, expected = [], set()
    for job_id in range(start, start + count):
        kind = rng.random()
        errids = " ".join(rng.sample(WHITELIST + OTHER + ["not.valid.anymore"], rng.randint(1, 3)))
        if kind < 0.15:
            jobs.append(failed_job(job_id, errids, health="success"))
        elif kind < 0.25:
            jobs.append(failed_job(job_id, "", health="fail"))
        elif kind < 0.30:
            jobs.append(failed_job(job_id, errids, suite="excluded-suite"))
        else:
            jobs.append(failed_job(job_id, errids))
            expected |= {(str(job_id), e) for e in errids.split() if e in WHITELIST}
    return jobs, expected


async def _all_pairs(repo: Repository) -> list[tuple[str, str]]:
    pairs = []
    before = None
    while page := await repo.list_tasks(TaskFilter(), limit=1000, before=before):
        pairs.extend((t.bad_job_id, t.error_id) for t in page)
        before = (page[-1].created_at, page[-1].id)
    return pairs


async def test_discovery_creates_exactly_the_right_tasks_across_cycles_and_restart(
        repo: Repository, db_url: DbUrl) -> None:
    rng = random.Random(7)
    await _whitelist(repo)
    settings = producer_settings(db_url, discovery_page_size=300, discovery_batch_size=200,
                                 discovery_suites_exclude=("excluded-suite",))
    jobs, expected = _seed(1, 2000, rng)
    # A job still running below the newest ones: the cursor must wait for it.
    jobs[500] = failed_job(501, WHITELIST[0], stage="running", health="")
    expected.discard(("501", WHITELIST[0]))
    await repo.insert_jobs(jobs)

    writer = TaskStateWriter(repo, lease_s=30, max_attempts=3)
    discovery = JobDiscovery(repo, writer, settings)
    first = await discovery.run_cycle()
    assert first.cursor == 500
    assert set(await _all_pairs(repo)) == expected

    second = await discovery.run_cycle()  # nothing new: nothing created
    assert second.created == 0

    # New jobs arrive, the running one fails; then the producer restarts (new instances).
    more, more_expected = _seed(2001, 1500, rng)
    await repo.insert_jobs(more)
    await repo.db.execute("UPDATE jobs SET job_stage = 'finish', job_health = 'fail' "
                          "WHERE id = 501")
    expected |= more_expected | {("501", WHITELIST[0])}
    restarted = JobDiscovery(repo, TaskStateWriter(repo, lease_s=30, max_attempts=3), settings)
    third = await restarted.run_cycle()
    assert third.cursor == 3500
    pairs = await _all_pairs(repo)
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == expected
    tasks = await repo.tasks_by_status(TaskStatus.WAIT)
    sample = next(t for t in tasks if t.bad_job_id == "1000") if any(
        t.bad_job_id == "1000" for t in tasks) else tasks[0]
    assert sample.git_url == "https://git.example/proj.git"
    assert sample.known_bad_commit == "c0ffee" and sample.source == "discovery"


async def test_discovery_runs_in_the_producer(repo: Repository, db_url: DbUrl) -> None:
    await _whitelist(repo)
    await repo.insert_jobs([failed_job(10, WHITELIST[1]), failed_job(11, OTHER[0])])
    settings = producer_settings(db_url, discovery_enabled=True, discovery_interval_s=0.1)
    async with running_producer(settings) as client:
        for _ in range(100):
            counts = await (await client.get("/api/v1/tasks/counts")).json()
            if counts["total"]:
                break
            await asyncio.sleep(0.05)
        assert counts["total"] == 1
        metrics = await (await client.get("/metrics")).text()
        assert 'bisect_discovery_cycles_total{result="ok"}' in metrics
