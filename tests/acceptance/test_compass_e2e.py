"""compass-ci end to end: compass-ci's own tables, a failed compact-shaped job and a whitelist
row, then discovery in a producer process, a consumer process with the compass tester, and
jobs run by a faithful fake of compass-ci's scheduler, down to the right culprit in
compass-ci's bisect and regression rows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from common.models import TaskStatus
from common.repository import Repository, TaskFilter
from common.schema import REGRESSION
from common.settings import DbUrl
from common.urls import canonical_repo_url
from tests.acceptance.support import Cluster
from tests.conftest import url_string
from tests.fake_compass import create_compass_tables, make_fixture_repo, serving
from tests.producer_support import compass_job_row, whitelist

pytestmark = pytest.mark.acceptance

ERRID = "makepkg.eid.src/foo.c:error:implicit-declaration-of-function"
NOISE = "last_state.test.makepkg.exit_code.2"
BAD_JOB = 25092516061247300


@pytest.fixture
async def site(repo: Repository, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """A compass-ci site: its tables as it creates them, then `bisect-admin init-db`."""
    await create_compass_tables(repo)
    created = await repo.create_missing_tables()
    assert "jobs" not in created and "regression" not in created
    assert not any((await repo.check_schema()).values())
    source, commits = make_fixture_repo(tmp_path / "src", 40, 23, ERRID)
    await repo.insert_job_rows([compass_job_row(BAD_JOB, f"{ERRID} {NOISE}", repo=str(source),
                                                commit=commits[-1])])
    await whitelist(repo, [ERRID])
    async with serving(repo) as (fake, url):
        yield {"fake": fake, "url": url, "commits": commits, "source": source}


async def test_a_failed_compass_job_is_bisected_to_its_culprit(
        repo: Repository, db_url: DbUrl, tmp_path: Path, site: dict[str, Any]) -> None:
    cluster = Cluster(tmp_path / "cluster", url_string(db_url))
    compass_profile = {"compass": {"kind": "compass", "poll_interval": 0.05,
                                   "my_account": "bisect", "my_email": "bisect@example.com",
                                   "my_name": "bisect", "my_token": "t0ken"}}
    try:
        cluster.start_producer(BISECT_DISCOVERY="true", BISECT_DISCOVERY_INTERVAL_S="0.2",
                               BISECT_DEFAULT_TESTER="compass",
                               BISECT_REPO_URL_ALLOW=str(tmp_path) + "/")
        cluster.start_consumer("c1", slots=1, BISECT_SCHEDULER_URL=site["url"],
                               BISECT_TESTERS=json.dumps(compass_profile))

        async def finished() -> list[Any]:
            tasks = await repo.list_tasks(TaskFilter(), limit=10)
            return [t for t in tasks if t.status.is_final]

        for _ in range(600):
            done = await finished()
            if done:
                break
            await asyncio.sleep(0.1)
        else:
            print(cluster.logs_tail())
            raise AssertionError("the task did not finish")
    finally:
        cluster.kill_all()

    (task,) = done
    assert task.status is TaskStatus.COMPLETED, (task.last_error, cluster.logs_tail())
    assert (task.bad_job_id, task.error_id) == (str(BAD_JOB), ERRID)
    culprit = site["commits"][23]
    # compass-ci's columns, with compass-ci's meanings.
    row = await repo.db.fetch_one("SELECT * FROM bisect WHERE id = %(id)s", {"id": task.id})
    assert row is not None
    assert row["bisect_status"] == "completed" and row["bad_commit"] == culprit
    git_url = canonical_repo_url(str(site["source"]))  # stored in its canonical form
    assert row["git_url"] == git_url and row["project"]
    assert row["first_bad_id"] and row["first_result_root"]
    assert row["start_time"] > 0 and row["end_time"] >= row["start_time"]
    # The culprit's job is one the fake scheduler ran, at the culprit, marked as a rerun.
    first_bad = await repo.get_job(int(row["first_bad_id"]))
    assert first_bad is not None and first_bad.commit == culprit
    assert first_bad.data["bad_job_id"] == str(BAD_JOB) and ERRID in first_bad.errids
    # Every job it submitted is a copy of the bad job at another commit, never discovered.
    assert site["fake"].submitted and all(
        body["bad_job_id"] == str(BAD_JOB) for body in site["fake"].submitted)
    assert len(await repo.list_tasks(TaskFilter(), limit=10)) == 1
    # compass-ci's regression row: counted, still whitelisted, no column added.
    (record,) = await repo.regressions_of(ERRID)
    assert record.valid == "true" and record.bisect_count == 1
    assert record.related_jobs == (str(BAD_JOB),)
    assert await repo.existing_columns(REGRESSION) == {"id", *REGRESSION.column_names()}
    (found,) = await repo.culprits_of(ERRID)
    assert found.first_bad_commit == culprit and found.git_url == git_url


