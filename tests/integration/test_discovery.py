"""Job discovery on the real database, over jobs shaped as compass-ci (compact) writes them."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pymysql

from common.repository import Repository, TaskFilter
from common.settings import DbUrl
from producer.discovery import JobDiscovery
from producer.writer import TaskStateWriter
from tests.producer_support import (
    compass_job_row,
    failed_job,
    producer_settings,
    running_producer,
    whitelist,
)

WHITELIST = ["last_state.test.makepkg.exit_code.2",
             "makepkg.eid.drivers/net/foo.c:error:implicit-declaration-of-function",
             "Case.Sensitive.Err"]
OTHER = ["stderr.warning_unused", "case.sensitive.err", "last_state.test.ltp.exit_code.2"]
INVALID = "not.valid.anymore"


async def _whitelist(repo: Repository) -> None:
    await whitelist(repo, WHITELIST)
    await whitelist(repo, [INVALID], valid="false")


def _seed(start: int, count: int, rng: random.Random
          ) -> tuple[list[dict[str, Any]], set[tuple[str, str]]]:
    """Jobs of every kind discovery must tell apart, and the pairs that must become tasks."""
    jobs, expected = [], set()
    for job_id in range(start, start + count):
        kind = rng.random()
        errids = " ".join(rng.sample(WHITELIST + OTHER + [INVALID], rng.randint(1, 3)))
        if kind < 0.10:
            jobs.append(failed_job(job_id, errids, health="success"))
        elif kind < 0.15:
            jobs.append(failed_job(job_id, errids, health="fail"))  # not bisected by default
        elif kind < 0.20:
            jobs.append(failed_job(job_id, "", health="abort"))
        elif kind < 0.25:
            jobs.append(failed_job(job_id, errids, suite="excluded-suite"))
        elif kind < 0.28:
            jobs.append(failed_job(job_id, errids, readiness="incomplete"))
        elif kind < 0.30:
            jobs.append(compass_job_row(job_id, errids, extra={"bad_job_id": "17"}))
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
    # A job still running below the newest ones, and one whose stats are still uploading:
    # the cursor must wait for both.
    jobs[500] = failed_job(501, WHITELIST[0], stage="running")
    jobs[700] = failed_job(701, WHITELIST[0], stage="finish", readiness="uploaded")
    expected -= {("501", WHITELIST[0]), ("701", WHITELIST[0])}
    await repo.insert_job_rows(jobs)

    writer = TaskStateWriter(repo, lease_s=30, max_attempts=3)
    discovery = JobDiscovery(repo, writer, settings)
    first = await discovery.run_cycle()
    assert first.cursor == 500
    assert set(await _all_pairs(repo)) == expected

    second = await discovery.run_cycle()  # nothing new: nothing created
    assert second.created == 0

    # New jobs arrive, the running ones finish (compass-ci REPLACEs the whole row); then the
    # producer restarts (new instances).
    more, more_expected = _seed(2001, 1500, rng)
    await repo.insert_job_rows(more)
    await repo.insert_job_rows([failed_job(501, WHITELIST[0]), failed_job(701, WHITELIST[1])],
                               replace=True)
    expected |= more_expected | {("501", WHITELIST[0]), ("701", WHITELIST[1])}
    restarted = JobDiscovery(repo, TaskStateWriter(repo, lease_s=30, max_attempts=3), settings)
    third = await restarted.run_cycle()
    assert third.cursor == 3500
    pairs = await _all_pairs(repo)
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == expected
    task = next(t for t in await repo.list_tasks(TaskFilter(bad_job_id="501"), limit=10))
    assert task.git_url == "https://git.example/proj.git"
    assert task.known_bad_commit == "c0ffee" and task.source == "discovery"
    assert task.project == "proj" and task.suite == "makepkg"
    assert task.extra["commit_key"] == "program.makepkg.commit"
    assert task.extra["compass_job"] is True


async def test_discovery_takes_the_healths_the_site_names(repo: Repository,
                                                          db_url: DbUrl) -> None:
    await _whitelist(repo)
    await repo.insert_job_rows([failed_job(1, WHITELIST[0], health="abort"),
                                failed_job(2, WHITELIST[0], health="fail"),
                                failed_job(3, WHITELIST[0], health="oom"),
                                failed_job(4, WHITELIST[0], health="success")])
    settings = producer_settings(db_url, discovery_health=("fail", "oom"))
    report = await JobDiscovery(repo, TaskStateWriter(repo, lease_s=30, max_attempts=3),
                                settings).run_cycle()
    assert report.created == 2
    assert sorted(job for job, _ in await _all_pairs(repo)) == ["2", "3"]


class _InsertsFail(Repository):
    """Real failed INSERTs while ``failing``: they go to a table that does not exist."""

    failing = False
    failures = 0

    async def insert_tasks(self, rows: Any) -> None:
        if self.failing:
            self.failures += 1
            await self.db.execute("INSERT INTO no_such_table (id) VALUES (1)")
        await super().insert_tasks(rows)


async def test_no_job_lost_when_an_insert_fails_or_a_job_is_unfit(repo: Repository,
                                                                  db_url: DbUrl) -> None:
    await _whitelist(repo)
    jobs = [failed_job(job_id, WHITELIST[job_id % 2]) for job_id in range(1, 41)]
    # Unfit: a repository name compass-ci allows but no key column can hold, and no commit.
    jobs[9] = compass_job_row(10, WHITELIST[0], repo="https://git.example/" + "p" * 300)
    jobs[19] = compass_job_row(20, WHITELIST[0], commit="")
    # URLs anyone who submits a compass-ci job writes: checked like submitted ones.
    jobs[24] = compass_job_row(25, WHITELIST[1], repo="https://user:pw@git.example/p.git")
    jobs[29] = compass_job_row(30, WHITELIST[0], repo="http://127.0.0.1:8080/internal.git")
    await repo.insert_job_rows(jobs)
    settings = producer_settings(db_url, discovery_page_size=7, discovery_batch_size=5)
    failing = _InsertsFail(repo.db)
    discovery = JobDiscovery(failing, TaskStateWriter(failing, lease_s=30, max_attempts=3),
                             settings)
    warm = await discovery.run_cycle()  # every fit job becomes a task; two are skipped
    assert warm.created == 40 - 4 and warm.skipped == 4
    await repo.insert_job_rows([failed_job(job_id, WHITELIST[job_id % 2])
                                for job_id in range(41, 61)])
    failing.failing = True
    first = await discovery.run_cycle()
    assert failing.failures > 0 and first.created == 0
    assert first.cursor == 40 and first.held_by == 41
    failing.failing = False
    second = await discovery.run_cycle()
    pairs = await _all_pairs(repo)
    assert sorted(pairs) == sorted({(str(j), WHITELIST[j % 2]) for j in range(1, 61)
                                    if j not in (10, 20, 25, 30)})
    assert second.cursor == 60
    # And a fresh producer finds nothing left to do.
    again = await JobDiscovery(repo, TaskStateWriter(repo, lease_s=30, max_attempts=3),
                               settings).run_cycle()
    assert again.created == 0


async def test_a_failing_batch_does_not_fail_its_neighbours(repo: Repository,
                                                             db_url: DbUrl) -> None:
    """A batch whose INSERT fails is retried job by job in the same cycle."""
    await _whitelist(repo)
    await repo.insert_job_rows([failed_job(job_id, WHITELIST[0]) for job_id in range(1, 11)])

    class FailsOnBatches(Repository):
        async def insert_tasks(self, rows: Any) -> None:
            if len(rows) > 1:
                raise pymysql.err.DataError(1406, "Data too long (simulated batch failure)")
            await super().insert_tasks(rows)

    failing = FailsOnBatches(repo.db)
    settings = producer_settings(db_url, discovery_batch_size=10)
    report = await JobDiscovery(failing, TaskStateWriter(failing, lease_s=30, max_attempts=3),
                                settings).run_cycle()
    assert report.created == 10 and report.cursor == 10


async def test_discovery_runs_in_the_producer(repo: Repository, db_url: DbUrl) -> None:
    await _whitelist(repo)
    await repo.insert_job_rows([failed_job(10, WHITELIST[1]), failed_job(11, OTHER[0])])
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
