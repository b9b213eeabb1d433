"""The repository on the real database server."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from common import ids
from common.db import Database
from common.errors import DatabaseUnavailable
from common.models import NewTask, Step, StoredVerdict, TaskStatus, Verdict
from common.repository import Repository, TaskFilter, new_task_row, now_ms, now_s
from common.settings import DbUrl, Dialect
from tests.conftest import url_string


async def test_talks_to_a_real_server(repo: Repository) -> None:
    version = await repo.server_version()
    if repo.dialect is Dialect.MYSQL:
        assert "MariaDB" in version or version[0].isdigit()
    assert version


def _admin(url: DbUrl, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BISECT_DB_URL": url_string(url)}
    return subprocess.run([sys.executable, "-m", "admin.admin", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_init_db_twice_then_check_db_reports_complete(db_url: DbUrl) -> None:
    first = _admin(db_url, "init-db")
    assert first.returncode == 0, first.stderr
    assert "bisect" in first.stdout
    second = _admin(db_url, "init-db")
    assert second.returncode == 0, second.stderr
    assert "tables created: none" in second.stdout
    check = _admin(db_url, "check-db")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "schema complete" in check.stdout


async def test_check_db_reports_and_adds_missing_column(repo: Repository, db_url: DbUrl) -> None:
    if repo.dialect is Dialect.MYSQL:
        await repo.db.execute("ALTER TABLE bisect DROP COLUMN confidence")
    else:
        await repo.db.execute("ALTER TABLE bisect DROP COLUMN confidence")
    check = _admin(db_url, "check-db")
    assert check.returncode == 1
    assert "missing columns in bisect: confidence" in check.stdout
    fixed = _admin(db_url, "check-db", "--add-missing")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "bisect.confidence" in fixed.stdout
    assert (await repo.check_schema()) == {"": []}


def test_bad_db_url_names_the_variable() -> None:
    result = subprocess.run([sys.executable, "-m", "admin.admin", "check-db"],
                            env={**os.environ, "BISECT_DB_URL": "postgres://x/y"},
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "BISECT_DB_URL" in result.stderr


@pytest.mark.parametrize("error_id", [
    "x' OR '1'='1",
    "e" * 4096,
    "ошибка.💥.日本語 \\ \" ' %s %(x)s",
    "trailing space ",
])
async def test_values_round_trip_byte_for_byte(repo: Repository, error_id: str) -> None:
    new = NewTask(bad_job_id="job'; DROP TABLE bisect; --", error_id=error_id,
                  git_url="", suite=None, good_commit=None, extra={"note": error_id})
    task_id = ids.task_id(new.bad_job_id, new.error_id)
    await repo.insert_tasks([new_task_row(task_id, new, now_s(), now_ms())])
    task = await repo.get_task(task_id)
    assert task is not None
    assert task.error_id == error_id
    assert task.bad_job_id == new.bad_job_id
    assert task.git_url is None and task.suite is None and task.good_commit is None
    assert task.extra == {"note": error_id}
    assert task.status is TaskStatus.WAIT
    # Exact filtering goes through the hash key, so case and padding never confuse it.
    listed = await repo.list_tasks(TaskFilter(error_id=error_id), limit=10)
    assert [t.id for t in listed] == [task_id]
    assert await repo.list_tasks(TaskFilter(error_id=error_id.upper() + "x"), limit=10) == []


async def test_paging_2500_tasks_returns_each_once(repo: Repository) -> None:
    rows = []
    for n in range(2500):
        new = NewTask(bad_job_id=str(n), error_id="e.page")
        # Several tasks share a created_at second, so the key must break ties by id.
        rows.append(new_task_row(ids.task_id(new.bad_job_id, new.error_id), new,
                                 1_700_000_000 + n // 7, now_ms()))
    await repo.insert_tasks(rows)
    seen: list[int] = []
    before = None
    while True:
        page = await repo.list_tasks(TaskFilter(), limit=300, before=before)
        if not page:
            break
        seen.extend(t.id for t in page)
        before = (page[-1].created_at, page[-1].id)
    assert len(seen) == 2500
    assert set(seen) == {r["id"] for r in rows}
    counts = await repo.count_by_status()
    assert counts["wait"] == 2500
    assert len(await repo.task_ids_by_status(TaskStatus.WAIT)) == 2500


async def test_steps_and_verdicts_round_trip(repo: Repository) -> None:
    for seq in range(3):
        step = Step(task_id=7, attempt=1, seq=seq, commit=f"{seq:040x}", verdict=Verdict.BAD,
                    runs=2, bad_runs=1, job_id=None, detail="ERRID: x")
        await repo.record_step(step)
        await repo.record_step(step)  # idempotent
    steps = await repo.steps_of_task(7)
    assert [s.seq for s in steps] == [0, 1, 2]
    assert steps[0].job_id is None and steps[0].runs == 2
    verdict = StoredVerdict(repo_url="https://git/x.git", commit="a" * 40,
                            tester_fingerprint="fp", error_id="E.x", verdict=Verdict.GOOD)
    await repo.record_verdict(verdict)
    found = await repo.verdicts_in_scope("https://git/x.git", "fp", "E.x")
    assert [v.commit for v in found] == ["a" * 40]
    assert await repo.verdicts_in_scope("https://git/x.git", "fp", "e.x") == []


async def test_state_rows(repo: Repository) -> None:
    assert await repo.get_state("cursor") is None
    await repo.put_state("cursor", "10", "me")
    await repo.put_state("cursor", "20", "me")
    value, owner, updated = await repo.get_state("cursor") or ("", "", 0)
    assert (value, owner) == ("20", "me") and updated > 0


async def test_unreachable_server_raises_database_unavailable() -> None:
    db = Database(DbUrl.parse("mysql://root@127.0.0.1:1/none"), attempts=2)
    with pytest.raises(DatabaseUnavailable) as info:
        await db.ping()
    assert "127.0.0.1:1" in str(info.value)
    await db.close()


async def test_finished_jobs_at_commit(repo: Repository) -> None:
    from common.compass_job import CompassJob
    from tests.producer_support import compass_job_row

    rows = [compass_job_row(1, "e.1", commit="abc"),
            compass_job_row(2, "e.1", commit="abc", stage="running"),
            compass_job_row(3, "e.1", commit="ABC"),
            compass_job_row(4, "e.1", commit="abc"),
            compass_job_row(5, "e.1", commit="abc", readiness="incomplete"),
            compass_job_row(6, "e.1", commit="abc", suite="other")]
    await repo.insert_job_rows(rows)
    source = CompassJob.from_row(rows[0]).source
    assert source is not None
    found = await repo.finished_jobs_at_commit("makepkg", source, "abc")
    assert [j.id for j in found] == [4, 1]
    assert found[0].data["pp"]["makepkg"]["project"] == "proj"


async def test_compass_tables_are_created_with_compass_ci_columns_and_never_altered(
        repo: Repository) -> None:
    from common.schema import JOBS, REGRESSION

    columns = await repo.existing_columns(JOBS)
    assert {"istage", "ihealth", "idata_readiness", "errid", "full_text_kv", "j"} <= columns
    assert not {"job_stage", "job_health", "tbox_group", "os_arch"} & columns
    regression = await repo.existing_columns(REGRESSION)
    assert regression == {"id", "record_type", "errid", "category", "first_seen",
                          "last_seen", "metric_name", "value", "bisect_count", "valid",
                          "related_jobs"}
    assert await repo.create_missing_tables() == []
    assert not any((await repo.check_schema()).values())


async def test_steps_keep_their_phase_and_posterior_and_tasks_what_runs_now(
        repo: Repository) -> None:
    from common.models import NewTask, Step, Verdict
    from common.repository import new_task_row

    await repo.insert_tasks([new_task_row(77, NewTask(bad_job_id="j", error_id="e",
                                                      tester="t"), 1, 1)])
    await repo.record_step(Step(task_id=77, attempt=1, seq=3, commit="c" * 40,
                                verdict=Verdict.BAD, phase="search",
                                posterior=(("a" * 40, 0.75), ("b" * 40, 0.2))))
    (step,) = await repo.steps_of_task(77)
    assert step.phase == "search" and step.posterior == (("a" * 40, 0.75), ("b" * 40, 0.2))
    await repo.update_testing(77, commit="d" * 40, phase="verify")
    task = await repo.get_task(77)
    assert task is not None and (task.current_commit, task.phase) == ("d" * 40, "verify")
