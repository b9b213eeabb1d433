"""bisect-task in place of compass-ci's bisect service: compass-ci's clients, its bisect rows
and its regression table, with the real producer and consumer processes."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from common.repository import Repository, TaskFilter
from common.schema import REGRESSION
from common.settings import DbUrl
from tests.acceptance.support import API_TOKEN, Cluster
from tests.conftest import url_string
from tests.fake_compass import create_compass_tables, make_fixture_repo, serving
from tests.producer_support import compass_job_row, whitelist

pytestmark = pytest.mark.acceptance

E1 = "makepkg.eid.src/foo.c:error:implicit-declaration-of-function"
E3 = "makepkg.eid.src/foo.c:warning:marked-invalid"
EXT = "ext.selftest.failure"
JOB_A, JOB_B = 25092516061247300, 25092516061247400


def http(base: str, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(base + path, data=body, method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, _decoded(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _decoded(exc.read())


def _decoded(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode()


def test_compass_ci_clients_get_compass_ci_answers(repo: Repository, db_url: DbUrl,
                                                   tmp_path: Path) -> None:
    """Every request of compass-ci.md §6 with compact's bodies and no token."""
    cluster = Cluster(tmp_path, url_string(db_url))
    try:
        cluster.start_producer(BISECT_LEGACY_WRITES="open")
        base = cluster.base_url + "/api/v1"
        # compass-ci's client test (tests/bisect-tasks/test_bisect_task_functional.py).
        status, body = http(base, "POST", "/new_bisect_task",
                            json.dumps({"bad_job_id": "12345", "error_id": "error_67890"})
                            .encode(), {"Content-Type": "application/json"})
        assert status == 200 and "Task added successfully" in body["message"]
        assert body["code"] == 200 and body["data"]["task_id"].isdigit()
        status, body = http(base, "GET", "/list_bisect_tasks")
        assert status == 200 and "tasks" in body
        (row,) = body["tasks"]
        assert row == {"id": int(row["id"]), "bad_job_id": "12345", "error_id": "error_67890",
                       "bisect_status": "wait"}
        status, body = http(base, "GET", "/list_tasks_by_status?status=completed")
        assert (status, body) == (200, {"tasks": []})
        status, body = http(base, "GET", "/list_tasks_by_status?status=wait")
        assert status == 200 and [t["error_id"] for t in body["tasks"]] == ["error_67890"]
        status, body = http(base, "DELETE", "/delete_failed_tasks")
        assert status == 200 and body == {"status": "success", "deleted_count": 0}
        # compact's other answers: extra fields ignored, any content type, its 400 messages.
        status, body = http(base, "POST", "/new_bisect_task", json.dumps(
            {"bad_job_id": 12346, "error_id": "e.2", "j": None, "whatever": [1]}).encode(),
            {"Content-Type": "text/plain"})
        assert status == 200 and body["message"] == "Task added successfully"
        assert http(base, "POST", "/new_bisect_task", b"") == (
            400, {"code": 400, "data": None, "message": "No task data provided"})
        assert http(base, "POST", "/new_bisect_task", b"{}",
                    {"Content-Type": "application/json"})[1]["message"] == \
            "No task data provided"
        assert http(base, "POST", "/new_bisect_task", b'{"bad_job_id": "1"}') == (
            400, {"code": 400, "data": None,
                  "message": "Missing required fields: bad_job_id, error_id"})
        # The same pair again is the same task (compass-ci would insert a second row).
        again = http(base, "POST", "/new_bisect_task",
                     json.dumps({"bad_job_id": "12345", "error_id": "error_67890"}).encode())
        assert again[0] == 200
        assert len(http(base, "GET", "/list_bisect_tasks")[1]["tasks"]) == 2
        # bisect-task's own routes keep their tokens.
        status, body = http(base, "POST", "/tasks", b'{"bad_job_id": "1", "error_id": "e"}')
        assert status == 401
    finally:
        cluster.kill_all()

    # With the default setting compass-ci's writes need a token, and say how to open them.
    closed = Cluster(tmp_path / "closed", url_string(db_url))
    try:
        closed.start_producer()
        base = closed.base_url + "/api/v1"
        status, body = http(base, "POST", "/new_bisect_task",
                            b'{"bad_job_id": "1", "error_id": "e"}')
        assert status == 401 and "BISECT_LEGACY_WRITES=open" in body["error"]
        assert http(base, "DELETE", "/delete_failed_tasks")[0] == 401
        status, body = http(base, "POST", "/new_bisect_task",
                            b'{"bad_job_id": "1", "error_id": "e"}',
                            {"Authorization": f"Bearer {API_TOKEN}"})
        assert status == 200 and body["code"] == 200
        assert http(base, "GET", "/list_bisect_tasks")[0] == 200
    finally:
        closed.kill_all()


@pytest.fixture
async def site(repo: Repository, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """compass-ci's tables, jobs, whitelist and bisect rows as compass-ci writes them."""
    await create_compass_tables(repo)
    await repo.create_missing_tables()
    source, commits = make_fixture_repo(tmp_path / "src", 30, 11, E1)
    source_b, commits_b = make_fixture_repo(tmp_path / "src-b", 16, 5, E3)
    await repo.insert_job_rows([
        compass_job_row(JOB_A, E1, repo=str(source), commit=commits[-1]),
        compass_job_row(JOB_B, E3, repo=str(source_b), commit=commits_b[-1])])
    await whitelist(repo, [E1])
    await whitelist(repo, [E3], valid="false")
    # compass-ci's service rows (§4.2): a task for job A, its start-up test task, a row its
    # producer wrote with a numeric job id (stored as ''), and a status it does not share.
    for task_id, bad_job_id, error_id, status in (
            (6071870716049123451, str(JOB_A), E1, "wait"),
            (2345678901234567890, "12345", "test_errid_123", "verifying"),
            (3456789012345678901, "", E1, "wait")):
        await repo.db.execute(
            "INSERT INTO bisect (id, bad_job_id, error_id, bisect_status, created_at) "
            "VALUES (%(id)s, %(job)s, %(errid)s, %(status)s, %(at)s)",
            {"id": task_id, "job": bad_job_id, "errid": error_id, "status": status,
             "at": 1_758_787_600})
    external, external_commits = make_fixture_repo(tmp_path / "ext", 20, 7, EXT)
    async with serving(repo) as (fake, url):
        yield {"fake": fake, "url": url, "commits": commits, "commits_b": commits_b,
               "external": external, "external_commits": external_commits}


async def test_compass_ci_rows_run_beside_ours_and_its_tables_keep_their_shape(
        repo: Repository, db_url: DbUrl, tmp_path: Path, site: dict[str, Any]) -> None:
    cluster = Cluster(tmp_path / "cluster", url_string(db_url))
    profiles = {"compass": {"kind": "compass", "poll_interval": 0.05, "my_account": "bisect",
                            "my_email": "b@example.com", "my_name": "b", "my_token": "t"},
                "ext": {"kind": "command", "command": ["sh", "check.sh"],
                        "errid_regex": r"^(\S+)$"}}
    try:
        cluster.start_producer(BISECT_DISCOVERY="true", BISECT_DISCOVERY_INTERVAL_S="0.2",
                               BISECT_DEFAULT_TESTER="compass", BISECT_LEGACY_WRITES="open",
                               BISECT_TESTERS="compass,ext",
                               BISECT_REPO_URL_ALLOW=str(tmp_path) + "/")
        cluster.start_consumer("c1", slots=2, BISECT_SCHEDULER_URL=site["url"],
                               BISECT_TESTERS=json.dumps(profiles))
        base = cluster.base_url
        # compass-ci's client submits job B's whitelisted-false error id.
        assert http(base, "POST", "/api/v1/new_bisect_task", json.dumps(
            {"bad_job_id": str(JOB_B), "error_id": E3}).encode())[0] == 200
        # A task outside compass-ci, through bisect-task's API.
        status, body = http(base, "POST", "/api/v1/tasks", json.dumps({
            "bad_job_id": "ext-1", "error_id": EXT, "repo_url": str(site["external"]),
            "bad_commit": site["external_commits"][-1], "tester": "ext"}).encode(),
            {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"})
        assert status == 201, body

        async def settled() -> bool:
            tasks = await repo.list_tasks(TaskFilter(), limit=100)
            ours = [t for t in tasks if t.error_id != "test_errid_123"]
            return len(ours) >= 4 and all(t.status.is_final for t in ours)

        for _ in range(900):
            if await settled():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(cluster.logs_tail())
        for path in ("/api/v1/tasks", "/api/v1/tasks/counts", "/api/v1/list_bisect_tasks",
                     "/dashboard", "/api/v1/list_tasks_by_status?status=verifying"):
            status, _ = http(base, "GET", path)
            assert status == 200, path
        listed = http(base, "GET", "/api/v1/tasks")[1]["tasks"]
    finally:
        cluster.kill_all()

    tasks = await repo.list_tasks(TaskFilter(), limit=100)
    by_pair = {(t.bad_job_id, t.error_id): t for t in tasks}
    assert len(by_pair) == len(tasks) == 5, [(t.bad_job_id, t.error_id) for t in tasks]
    # compass-ci's wait row for job A ran (no second task beside it) and found the culprit.
    row_a = by_pair[(str(JOB_A), E1)]
    assert row_a.id == 6071870716049123451
    assert row_a.status.value == "completed", row_a.last_error
    assert row_a.bad_commit == site["commits"][11]
    # The row compass-ci's producer wrote without a job id failed with the reason.
    empty = by_pair[("", E1)]
    assert empty.status.value == "failed" and "bad_job_id" in (empty.last_error or "")
    # A status bisect-task does not know is kept and shown as it is.
    assert by_pair[("12345", "test_errid_123")].status.value == "verifying"
    assert {t["status"] for t in listed} >= {"verifying", "completed", "failed"}
    # bisect_status only ever holds compass-ci's four statuses (and the one it found).
    assert {t.status.value for t in tasks} <= {"wait", "processing", "completed", "failed",
                                               "verifying"}
    # The regression table: no column added, no valid flipped, the API task outside
    # compass-ci left no row; compass-ci's jobs were counted.
    assert await repo.existing_columns(REGRESSION) == {"id", *REGRESSION.column_names()}
    (e1,) = await repo.regressions_of(E1)
    assert e1.valid == "true" and e1.bisect_count == 1 and e1.related_jobs == (str(JOB_A),)
    (e3,) = await repo.regressions_of(E3)
    assert e3.valid == "false"
    row_b = by_pair[(str(JOB_B), E3)]
    assert row_b.status.value == "completed" and row_b.bad_commit == site["commits_b"][5]
    assert e3.bisect_count == 1
    assert await repo.regressions_of(EXT) == []
    assert by_pair[("ext-1", EXT)].status.value == "completed"
    (ext_culprit,) = await repo.culprits_of(EXT)
    assert ext_culprit.first_bad_commit == site["external_commits"][7]
