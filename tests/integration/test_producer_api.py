"""The producer's HTTP API on the real database."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from common.models import Step, TaskStatus, Verdict
from common.repository import Repository
from common.settings import DbUrl
from producer.routes import ROUTES
from producer.settings import ProducerSettings
from tests.producer_support import (
    CONSUMER,
    WRITE,
    failed_job,
    producer_settings,
    running_producer,
)

ERR = "last_state.test.pkgbuild.exit_code.1"


def _settings(db_url: DbUrl, **overrides: Any) -> ProducerSettings:
    """The test producer, with the ``demo`` tester these tests use known to it."""
    return producer_settings(db_url, **{"known_testers": frozenset({"demo"}), **overrides})


async def test_submit_from_job_then_same_pair_returns_existing(repo: Repository,
                                                               db_url: DbUrl) -> None:
    await repo.insert_job_rows([failed_job(42, ERR)])
    async with running_producer(_settings(db_url)) as client:
        first = await client.post("/api/v1/tasks", json={"bad_job_id": 42, "error_id": ERR},
                                  headers=WRITE)
        assert first.status == 201, await first.text()
        task = (await first.json())["task"]
        assert task["git_url"] == "https://git.example/proj.git"
        assert task["known_bad_commit"] == "c0ffee"
        assert task["suite"] == "makepkg" and task["status"] == "wait"
        again = await client.post("/api/v1/new_bisect_task",
                                  json={"bad_job_id": "42", "error_id": ERR}, headers=WRITE)
        assert again.status == 200
        assert (await again.json())["data"]["task_id"] == task["id"]
        shown = await client.get(f"/api/v1/tasks/{task['id']}")
        assert shown.status == 200
        assert (await shown.json())["steps"] == []


async def test_fifty_concurrent_submissions_make_one_task(repo: Repository,
                                                          db_url: DbUrl) -> None:
    async with running_producer(_settings(db_url)) as client:
        body = {"bad_job_id": "ext-1", "error_id": ERR, "repo_url": "https://git.example/a.git",
                "bad_commit": "abc1234"}
        answers = await asyncio.gather(*[client.post("/api/v1/tasks", json=body, headers=WRITE)
                                         for _ in range(50)])
        statuses = sorted(a.status for a in answers)
        ids = {(await a.json())["task"]["id"] for a in answers}
        assert statuses.count(201) == 1 and statuses.count(200) == 49
        assert len(ids) == 1
        assert (await repo.count_by_status())["wait"] == 1


async def test_batch_submit_answers_per_task(repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(_settings(db_url)) as client:
        tasks = [{"bad_job_id": f"b{i}", "error_id": ERR, "repo_url": "https://git.example/a",
                  "bad_commit": "abc1234"} for i in range(300)]
        tasks.append(tasks[0])  # the same pair twice in one batch
        tasks.append({"bad_job_id": "x", "error_id": 5})
        answer = await client.post("/api/v1/tasks/batch", json={"tasks": tasks}, headers=WRITE)
        assert answer.status == 200, await answer.text()
        body = await answer.json()
        assert (body["created"], body["existing"], body["invalid"]) == (300, 1, 1)
        assert body["results"][300]["status"] == 200
        assert body["results"][300]["task_id"] == body["results"][0]["task_id"]
        assert body["results"][301] == {"index": 301, "status": 422, "field": "error_id",
                                        "error": "must be a non-empty string"}
        too_many = await client.post("/api/v1/tasks/batch",
                                     json={"tasks": [tasks[0]] * 1001}, headers=WRITE)
        assert too_many.status == 422
        assert (await too_many.json())["field"] == "tasks"
        assert (await repo.count_by_status())["wait"] == 300


@pytest.mark.parametrize(("body", "status", "field"), [
    ("{not json", 400, "body"),
    ("[1, 2]", 400, "body"),
    ("", 400, "body"),
    (json.dumps({"error_id": ERR}), 422, "bad_job_id"),
    (json.dumps({"bad_job_id": "1"}), 422, "error_id"),
    (json.dumps({"bad_job_id": True, "error_id": ERR}), 422, "bad_job_id"),
    (json.dumps({"bad_job_id": "1", "error_id": ERR, "priority": "high"}), 422, "priority"),
    (json.dumps({"bad_job_id": "1", "error_id": ERR, "priority": 5000}), 422, "priority"),
    (json.dumps({"bad_job_id": "1", "error_id": ERR, "tester": "rm -rf /"}), 422, "tester"),
    (json.dumps({"bad_job_id": "1", "error_id": ERR, "timeout": -1}), 422, "timeout"),
    (json.dumps({"bad_job_id": "1", "error_id": ERR, "color": "red"}), 422, "color"),
    (json.dumps({"bad_job_id": "1", "error_id": "a b"}), 422, "error_id"),
    (json.dumps({"bad_job_id": "1", "error_id": ERR, "repo_url": "https://evil/x",
                 "bad_commit": "abc"}), 422, "repo_url"),
    (json.dumps({"bad_job_id": "1", "error_id": ERR, "repo_url": "https://git.example/x",
                 "bad_commit": "--upload-pack=x"}), 422, "bad_commit"),
    (json.dumps({"bad_job_id": "404", "error_id": ERR}), 422, "bad_job_id"),
])
async def test_bad_submissions_name_the_field_and_write_nothing(
        repo: Repository, db_url: DbUrl, body: str, status: int, field: str) -> None:
    async with running_producer(_settings(db_url)) as client:
        answer = await client.post("/api/v1/tasks", data=body,
                                   headers={**WRITE, "Content-Type": "application/json"})
        assert answer.status == status, await answer.text()
        payload = await answer.json()
        assert payload["field"] == field and payload["error"]
        assert "Traceback" not in await answer.text()
    assert sum((await repo.count_by_status()).values()) == 0


async def test_body_over_the_limit_is_413(repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(_settings(db_url, max_body_bytes=2048)) as client:
        answer = await client.post("/api/v1/tasks", data="x" * 10_000,
                                   headers={**WRITE, "Content-Type": "application/json"})
        assert answer.status == 413
        assert (await answer.json())["field"] == "body"


async def test_tokens(repo: Repository, db_url: DbUrl) -> None:
    body = {"bad_job_id": "1", "error_id": ERR}
    async with running_producer(_settings(db_url)) as client:
        assert (await client.post("/api/v1/tasks", json=body)).status == 401
        wrong = await client.post("/api/v1/tasks", json=body,
                                  headers={"Authorization": "Bearer nope"})
        assert wrong.status == 403
        assert (await client.post("/api/v1/tasks", json=body, headers=CONSUMER)).status == 403
        claim = {"consumer_id": "c1", "slots": 1, "testers": ["compass"]}
        assert (await client.post("/api/v1/internal/claim", json=claim,
                                  headers=WRITE)).status == 403
        assert (await client.get("/api/v1/tasks")).status == 200
    async with running_producer(_settings(db_url, open_reads=False)) as client:
        assert (await client.get("/api/v1/tasks")).status == 401
        assert (await client.get("/api/v1/tasks", headers=WRITE)).status == 200
        assert (await client.get("/healthz")).status == 200


async def test_list_filters_paging_and_counts(repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(_settings(db_url)) as client:
        tasks = [{"bad_job_id": f"j{i}", "error_id": ERR if i % 2 else "other.err",
                  "repo_url": "https://git.example/a", "bad_commit": "abc1234"}
                 for i in range(30)]
        await client.post("/api/v1/tasks/batch", json={"tasks": tasks}, headers=WRITE)
        seen = []
        cursor = None
        while True:
            params = {"limit": "7", "error_id": ERR, **({"cursor": cursor} if cursor else {})}
            page = await (await client.get("/api/v1/tasks", params=params)).json()
            seen.extend(t["bad_job_id"] for t in page["tasks"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(f"j{i}" for i in range(30) if i % 2)
        upper = await (await client.get("/api/v1/tasks", params={"error_id": ERR.upper()})).json()
        assert upper["tasks"] == []
        one = await (await client.get("/api/v1/tasks", params={"bad_job_id": "j3"})).json()
        assert [t["bad_job_id"] for t in one["tasks"]] == ["j3"]
        group = one["tasks"][0]["group_key"]
        grouped = await (await client.get("/api/v1/tasks", params={"group": group})).json()
        assert len(grouped["tasks"]) == 15
        counts = await (await client.get("/api/v1/tasks/counts")).json()
        assert counts["counts"]["wait"] == 30 and counts["total"] == 30
        for params, field in (({"status": "wait or 1=1"}, "status"), ({"limit": "0"}, "limit"),
                              ({"cursor": "zz"}, "cursor"), ({"colour": "x"}, "colour")):
            bad = await client.get("/api/v1/tasks", params=params)
            assert bad.status == 422 and (await bad.json())["field"] == field
        assert (await client.get("/api/v1/list_bisect_tasks")).status == 200
        missing = await client.get("/api/v1/tasks/12345")
        assert missing.status == 404 and (await missing.json())["field"] == "id"
        huge = await client.get("/api/v1/tasks/99999999999999999999")
        assert huge.status == 422
        assert (await client.get("/api/v1/tasks/abc")).status == 404


async def _submit(client, bad_job_id: str = "t1") -> str:  # type: ignore[no-untyped-def]
    answer = await client.post("/api/v1/tasks", headers=WRITE, json={
        "bad_job_id": bad_job_id, "error_id": ERR, "repo_url": "https://git.example/a",
        "bad_commit": "abc1234", "tester": "demo"})
    return str((await answer.json())["task"]["id"])


async def _claim_one(client) -> str:  # type: ignore[no-untyped-def]
    """Claim one demo task as consumer c1; its lease secret."""
    answer = await client.post("/api/v1/internal/claim", headers=CONSUMER,
                               json={"consumer_id": "c1", "slots": 1, "testers": ["demo"]})
    (task,) = (await answer.json())["tasks"]
    return str(task["lease"])


async def test_claim_heartbeat_finish_and_regression_of_states(repo: Repository,
                                                               db_url: DbUrl) -> None:
    async with running_producer(_settings(db_url)) as client:
        task_id = await _submit(client)
        claim = {"consumer_id": "c1", "slots": 2, "testers": ["demo"]}
        got = await (await client.post("/api/v1/internal/claim", json=claim,
                                       headers=CONSUMER)).json()
        assert [t["id"] for t in got["tasks"]] == [task_id] and got["tasks"][0]["claim"] == 1
        lease = got["tasks"][0]["lease"]
        again = await (await client.post("/api/v1/internal/claim", json=claim,
                                         headers=CONSUMER)).json()
        assert again["tasks"] == []
        beat = await (await client.post("/api/v1/internal/heartbeat", headers=CONSUMER, json={
            "consumer_id": "c1", "leases": {task_id: lease}})).json()
        assert beat["renewed"] == [task_id]
        other = await (await client.post("/api/v1/internal/heartbeat", headers=CONSUMER, json={
            "consumer_id": "c2", "leases": {task_id: lease}})).json()
        assert other["stop"] == [{"task_id": task_id, "reason": "lease_lost"}]
        await repo.record_step(Step(task_id=int(task_id), attempt=1, seq=0, commit="a" * 40,
                                    verdict=Verdict.BAD))
        stolen = await client.post("/api/v1/internal/finish", headers=CONSUMER, json={
            "consumer_id": "c2", "task_id": task_id, "outcome": "completed", "lease": lease})
        assert stolen.status == 409
        done = await client.post("/api/v1/internal/finish", headers=CONSUMER, json={
            "consumer_id": "c1", "task_id": task_id, "outcome": "completed", "lease": lease,
            "result": {"bad_commit": "a" * 40, "confidence": 0.97, "verification": "held",
                       "subject": "break it"}})
        assert done.status == 200, await done.text()
        shown = await (await client.get(f"/api/v1/tasks/{task_id}")).json()
        assert shown["task"]["status"] == "completed"
        assert shown["task"]["bad_commit"] == "a" * 40
        assert shown["task"]["confidence"] == pytest.approx(0.97, abs=1e-4)
        assert shown["task"]["extra"]["result"]["subject"] == "break it"
        assert [s["commit"] for s in shown["steps"]] == ["a" * 40]
        assert (await client.post(f"/api/v1/tasks/{task_id}/retry", headers=WRITE)).status == 409
        assert (await client.post(f"/api/v1/tasks/{task_id}/cancel", headers=WRITE)).status == 409


async def test_cancel_retry_delete(repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(_settings(db_url)) as client:
        waiting = await _submit(client, "w1")
        cancelled = await (await client.post(f"/api/v1/tasks/{waiting}/cancel",
                                             headers=WRITE)).json()
        # compass-ci's four statuses: a cancel is 'failed', the reason beside it.
        assert cancelled["task"]["status"] == "failed"
        assert cancelled["task"]["end_reason"] == "cancelled"
        running = await _submit(client, "r1")
        lease = await _claim_one(client)
        marked = await (await client.post(f"/api/v1/tasks/{running}/cancel",
                                          headers=WRITE)).json()
        assert marked["task"]["status"] == "processing" and marked["task"]["cancel_requested"]
        beat = await (await client.post("/api/v1/internal/heartbeat", headers=CONSUMER, json={
            "consumer_id": "c1", "leases": {running: lease}})).json()
        assert beat["stop"] == [{"task_id": running, "reason": "cancelled"}]
        await client.post("/api/v1/internal/finish", headers=CONSUMER, json={
            "consumer_id": "c1", "task_id": running, "outcome": "failed", "reason": "killed",
            "lease": lease})
        stopped = await repo.get_task(int(running))
        assert stopped is not None and stopped.status is TaskStatus.FAILED and stopped.cancelled
        failing = await _submit(client, "f1")
        lease = await _claim_one(client)
        await client.post("/api/v1/internal/finish", headers=CONSUMER, json={
            "consumer_id": "c1", "task_id": failing, "outcome": "failed", "reason": "timeout",
            "lease": lease})
        failed = await repo.get_task(int(failing))
        assert failed is not None and failed.last_error == "timeout"
        retried = await (await client.post(f"/api/v1/tasks/{failing}/retry",
                                           headers=WRITE)).json()
        assert retried["task"]["status"] == "wait" and retried["task"]["retry_count"] == 1
        lease = await _claim_one(client)
        await client.post("/api/v1/internal/finish", headers=CONSUMER, json={
            "consumer_id": "c1", "task_id": failing, "outcome": "failed", "reason": "again",
            "lease": lease})
        deleted = await (await client.delete("/api/v1/delete_failed_tasks",
                                              headers=WRITE)).json()
        assert deleted == {"status": "success", "deleted_count": 3}  # the cancels too
        assert await repo.get_task(int(failing)) is None


async def test_sweeper_requeues_then_fails_expired_leases(repo: Repository,
                                                          db_url: DbUrl) -> None:
    settings = _settings(db_url, lease_s=1, max_attempts=2)
    async with running_producer(settings) as client:
        task_id = await _submit(client)
        claim = {"consumer_id": "c1", "slots": 1, "testers": ["demo"]}
        await client.post("/api/v1/internal/claim", json=claim, headers=CONSUMER)
        for _ in range(60):
            task = await repo.get_task(int(task_id))
            if task is not None and task.status is TaskStatus.WAIT:
                break
            await asyncio.sleep(0.1)
        assert task is not None and task.status is TaskStatus.WAIT and task.attempts == 1
        await client.post("/api/v1/internal/claim", json=claim, headers=CONSUMER)
        for _ in range(60):
            task = await repo.get_task(int(task_id))
            if task is not None and task.status is TaskStatus.FAILED:
                break
            await asyncio.sleep(0.1)
        assert task is not None and task.status is TaskStatus.FAILED
        assert "lease expired 2 times" in (task.last_error or "")


async def test_second_producer_is_refused(repo: Repository, db_url: DbUrl) -> None:
    from producer.app import create_app
    from producer.errors import WriterConflict
    from producer.singleton import WriterGuard

    async with running_producer(_settings(db_url)):
        second = WriterGuard(repo, "second-producer", 0.2)
        with pytest.raises(WriterConflict, match="test-producer"):
            await second.acquire()
    # After a clean stop the row is released and a successor starts at once.
    await WriterGuard(repo, "successor", 0.2).acquire()
    assert create_app  # imported for the side effect of checking the module loads


async def test_health_metrics_openapi(repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(_settings(db_url)) as client:
        assert (await (await client.get("/healthz")).json())["status"] == "alive"
        assert (await (await client.get("/readyz")).json())["status"] == "ready"
        await _submit(client)
        text = await (await client.get("/metrics")).text()
        assert 'bisect_tasks{status="wait"} 1.0' in text
        assert "bisect_http_requests_total" in text
        doc = await (await client.get("/api/v1/openapi.json")).json()
        registered = {(r.method, r.resource.canonical) for r in client.app.router.routes()  # type: ignore[union-attr]
                      if r.method != "HEAD"}
        from producer.openapi import openapi_path
        documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
        assert {(m, openapi_path(p)) for m, p in registered} == documented
        assert len(documented) >= len(ROUTES) - 0


async def test_database_down_gives_503_not_a_trace(db_url: DbUrl) -> None:
    dead = DbUrl.parse("mysql://root@127.0.0.1:1/none")
    from aiohttp.test_utils import TestClient, TestServer

    from producer.app import create_app
    app = create_app(producer_settings(dead))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        listed = await client.get("/api/v1/tasks")
        assert listed.status == 503
        assert "database" in (await listed.json())["error"]
        submitted = await client.post("/api/v1/tasks", headers=WRITE,
                                      json={"bad_job_id": "1", "error_id": ERR})
        assert submitted.status == 503
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/healthz")).status == 200
    finally:
        await client.close()


async def test_claim_long_poll_wakes_on_submit(repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(_settings(db_url)) as client:
        claim = {"consumer_id": "c1", "slots": 1, "testers": ["demo"], "wait_s": 10}
        loop = asyncio.get_running_loop()
        started = loop.time()
        pending = asyncio.ensure_future(client.post("/api/v1/internal/claim", json=claim,
                                                    headers=CONSUMER))
        await asyncio.sleep(0.3)
        assert not pending.done()
        task_id = await _submit(client)
        answer = await (await pending).json()
        assert [t["id"] for t in answer["tasks"]] == [task_id]
        assert answer["long_poll"] is True
        assert loop.time() - started < 5
        empty = await client.post("/api/v1/internal/claim", headers=CONSUMER,
                                  json={**claim, "wait_s": 0.3})
        assert (await empty.json())["tasks"] == []
        bad = await client.post("/api/v1/internal/claim", headers=CONSUMER,
                                json={**claim, "wait_s": 99})
        assert bad.status == 422 and (await bad.json())["field"] == "wait_s"
