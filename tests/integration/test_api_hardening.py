"""What the security review's medium and low findings (issue 15, findings 6 and 7) promise
of the producer's API: one bad item fails alone, results have a schema and stay out of list
rows, long polls are capped and woken by tester, and bad input is a 4xx naming the field."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from common.errors import ConfigError, ValidationError
from common.models import NewTask
from common.repository import Repository
from common.settings import DbUrl
from producer.app import create_app
from producer.settings import ProducerSettings
from producer.state import STATE_KEY
from producer.writer import TaskStateWriter
from tests.producer_support import CONSUMER, WRITE, producer_settings, running_producer

ROOT = Path(__file__).resolve().parents[2]
ERR = "last_state.test.pkgbuild.exit_code.1"
JSON = {**WRITE, "Content-Type": "application/json"}


def _settings(db_url: DbUrl, **overrides: Any) -> ProducerSettings:
    return producer_settings(db_url, **{"known_testers": frozenset({"demo", "other"}),
                                        **overrides})


def _task(job: str, **fields: Any) -> dict[str, Any]:
    return {"bad_job_id": job, "error_id": ERR, "repo_url": "https://git.example/a",
            "bad_commit": "abc1234", "tester": "demo", **fields}


async def _claim_one(client: TestClient[Any, Any]) -> dict[str, Any]:
    answer = await client.post("/api/v1/internal/claim", headers=CONSUMER, json={
        "consumer_id": "c1", "slots": 1, "testers": ["demo"]})
    (task,) = (await answer.json())["tasks"]
    return dict(task)


# ---------------------------------------------------------------- finding 6
async def test_an_unstorable_item_fails_alone_in_a_coalesced_submit(repo: Repository) -> None:
    writer = TaskStateWriter(repo, lease_s=10, max_attempts=3)
    good = [NewTask(bad_job_id=f"g{n}", error_id="e", tester="t") for n in range(20)]
    bad = NewTask(bad_job_id="bad", error_id="e", tester="t", project="p" * 300)
    answers = await asyncio.gather(*[writer.submit([item]) for item in [*good[:10], bad,
                                                                        *good[10:]]],
                                   return_exceptions=True)
    errors = [a for a in answers if isinstance(a, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], ValidationError), errors
    assert errors[0].field == "repo_url"
    assert sum(1 for a in answers if not isinstance(a, BaseException) and a[0].created) == 20
    assert (await repo.count_by_status())["wait"] == 20


async def test_a_bad_item_in_a_batch_or_beside_single_submits_fails_alone(
        repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(_settings(db_url)) as client:
        items = [_task(f"b{n}") for n in range(5)]
        items.insert(2, _task("lone", error_id="bad\ud800id"))
        body = json.dumps({"tasks": items})  # ensure_ascii: the surrogate as "\ud800"
        answer = await client.post("/api/v1/tasks/batch", data=body, headers=JSON)
        assert answer.status == 200, await answer.text()
        results = (await answer.json())["results"]
        assert results[2]["status"] == 422 and results[2]["field"] == "error_id"
        assert [r["status"] for r in results if r["index"] != 2] == [201] * 5
        singles = [json.dumps(_task(f"s{n}")) for n in range(10)]
        singles.append(json.dumps(_task("s-bad", error_id="x\udfff")))
        answers = await asyncio.gather(*[client.post("/api/v1/tasks", data=b, headers=JSON)
                                         for b in singles])
        assert sorted(a.status for a in answers) == [201] * 10 + [422]
    assert (await repo.count_by_status())["wait"] == 15


async def test_results_have_a_schema_and_stay_out_of_list_rows(repo: Repository,
                                                               db_url: DbUrl) -> None:
    async with running_producer(_settings(db_url)) as client:
        await client.post("/api/v1/tasks", json=_task("r1"), headers=WRITE)
        task = await _claim_one(client)
        finish = {"consumer_id": "c1", "task_id": task["id"], "outcome": "completed",
                  "lease": task["lease"]}
        too_big = {"bad_commit": "a" * 40, "tested": ["x" * 1000] * 80}
        answer = await client.post("/api/v1/internal/finish", headers=CONSUMER,
                                   json={**finish, "result": too_big})
        assert answer.status == 422 and (await answer.json())["field"] == "result"
        bulky = {"bad_commit": "a" * 40, "confidence": 0.9, "tested": ["x" * 1000] * 60}
        answer = await client.post("/api/v1/internal/finish", headers=CONSUMER,
                                   json={**finish, "result": bulky})
        assert answer.status == 200, await answer.text()
        rows = (await (await client.get("/api/v1/tasks")).json())["tasks"]
        assert rows[0]["bad_commit"] == "a" * 40 and "result" not in rows[0]["extra"]
        assert len(json.dumps(rows)) < 10_000
        one = (await (await client.get(f"/api/v1/tasks/{task['id']}")).json())["task"]
        assert len(one["extra"]["result"]["tested"]) == 60


async def test_long_polls_are_capped_and_woken_only_for_their_testers(
        repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(_settings(db_url, max_long_polls=6)) as client:
        writer = client.app[STATE_KEY].writer  # type: ignore[index]
        looks: dict[str, int] = {}
        claim = writer.claim

        async def counted(consumer_id: str, slots: int, testers: Any) -> Any:
            looks[consumer_id] = looks.get(consumer_id, 0) + 1
            return await claim(consumer_id, slots, testers)

        writer.claim = counted

        def poll(consumer: str, tester: str) -> Any:
            return asyncio.ensure_future(client.post(
                "/api/v1/internal/claim", headers=CONSUMER,
                json={"consumer_id": consumer, "slots": 1, "testers": [tester], "wait_s": 5}))

        others = [poll(f"other-{n}", "other") for n in range(5)]
        demo = poll("demo-0", "demo")
        await asyncio.sleep(0.5)
        assert not demo.done() and not any(o.done() for o in others)
        assert "bisect_long_polls_waiting 6.0" in await (await client.get("/metrics")).text()
        # The seventh long poll is over the cap: it answers at once, without waiting.
        started = asyncio.get_running_loop().time()
        over = await (await client.post("/api/v1/internal/claim", headers=CONSUMER, json={
            "consumer_id": "late", "slots": 1, "testers": ["demo"], "wait_s": 5})).json()
        assert over["long_poll"] is False and over["tasks"] == []
        assert asyncio.get_running_loop().time() - started < 2
        await client.post("/api/v1/tasks", json=_task("w1"), headers=WRITE)
        answer = await (await demo).json()
        assert len(answer["tasks"]) == 1 and answer["long_poll"] is True
        # The submit woke the demo poll only: each "other" poll looked exactly once.
        assert all(looks[f"other-{n}"] == 1 for n in range(5)), looks
        for other in others:
            other.cancel()


async def test_a_submit_wakes_one_waiter_a_task(repo: Repository, db_url: DbUrl) -> None:
    """300 waiting claims used to be woken by every submit (6 to 480 ms a submit): now one
    waiter a new task looks, and a waiter that fills its slots passes the wake-up on."""
    async with running_producer(_settings(db_url)) as client:
        writer = client.app[STATE_KEY].writer  # type: ignore[index]
        looks: dict[str, int] = {}
        claim = writer.claim

        async def counted(consumer_id: str, slots: int, testers: Any) -> Any:
            looks[consumer_id] = looks.get(consumer_id, 0) + 1
            return await claim(consumer_id, slots, testers)

        writer.claim = counted
        polls = [asyncio.ensure_future(client.post(
            "/api/v1/internal/claim", headers=CONSUMER,
            json={"consumer_id": f"w{n}", "slots": 1, "testers": ["demo"], "wait_s": 10}))
            for n in range(20)]
        await asyncio.sleep(0.5)
        await client.post("/api/v1/tasks", json=_task("one"), headers=WRITE)
        await asyncio.sleep(0.5)
        assert sum(looks.values()) <= 20 + 2, looks  # the woken one, and one it passed on to
        items = [_task(f"many{n}") for n in range(5)]
        await client.post("/api/v1/tasks/batch", json={"tasks": items}, headers=WRITE)
        # Every task goes to a waiting claim at once, long before the claims' 10 s.
        done, _ = await asyncio.wait(polls, timeout=2)
        got = [len((await p.result().json())["tasks"]) for p in done]
        assert sum(got) == 6, got
        for poll in polls:
            poll.cancel()


async def test_a_submitted_timeout_is_bounded(repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(_settings(db_url, max_task_timeout_s=3600)) as client:
        week = await client.post("/api/v1/tasks", json=_task("t1", timeout=7 * 24 * 3600),
                                 headers=WRITE)
        assert week.status == 422 and (await week.json())["field"] == "timeout"
        hour = await client.post("/api/v1/tasks", json=_task("t2", timeout=3600),
                                 headers=WRITE)
        assert hour.status == 201


# ---------------------------------------------------------------- finding 7
@pytest.mark.parametrize(("body", "status", "field"), [
    (json.dumps(_task("u1", error_id="e\ud800")), 422, "error_id"),
    ("[" * 30_000 + "]" * 30_000, 400, "body"),
    ("[" * 100_000 + "]" * 100_000, 413, "body"),  # over the route's 64 KiB
    ('{"a":' * 50 + "1" + "}" * 50, 400, "body"),
    (json.dumps(_task("n1", repo_url="https://git.example/a\x00b")), 422, "repo_url"),
    (json.dumps(_task("n2", repo_url="https://git.example/a\x01b")), 422, "repo_url"),
    ('{"bad_job_id": "x", "error_id": "e", "priority": NaN}', 400, "body"),
    ('{"bad_job_id": "x", "error_id": "e", "priority": ' + "9" * 5000 + "}", 400, "body"),
])
async def test_bad_submit_bodies_are_4xx_naming_the_field(
        repo: Repository, db_url: DbUrl, body: str, status: int, field: str) -> None:
    async with running_producer(_settings(db_url)) as client:
        answer = await client.post("/api/v1/tasks", data=body, headers=JSON)
        assert answer.status == status, await answer.text()
        assert (await answer.json())["field"] == field


async def test_a_100000_deep_batch_is_400(repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(_settings(db_url)) as client:
        body = '{"tasks": ' + "[" * 100_000 + "]" * 100_000 + "}"
        answer = await client.post("/api/v1/tasks/batch", data=body, headers=JSON)
        assert answer.status == 400, await answer.text()
        assert (await answer.json())["field"] == "body"


@pytest.mark.parametrize(("result", "field"), [
    ({"bad_commit": "a" * 40, "confidence": "high"}, "result.confidence"),
    ({"bad_commit": "a" * 40, "confidence": True}, "result.confidence"),
    ({"bad_commit": "a" * 40, "confidence": 7}, "result.confidence"),
    ({"bad_commit": "a" * 300}, "result.bad_commit"),
    ({"bad_commit": 12}, "result.bad_commit"),
    ({"bad_commit": "a" * 40, "first_result_root": "/r\x00"}, "result.first_result_root"),
    ({"bad_commit": "a" * 40, "subject": "lone \ud800"}, "result"),
])
async def test_bad_finish_results_are_422_naming_the_field(
        repo: Repository, db_url: DbUrl, result: dict[str, Any], field: str) -> None:
    async with running_producer(_settings(db_url)) as client:
        await client.post("/api/v1/tasks", json=_task("f1"), headers=WRITE)
        task = await _claim_one(client)
        body = json.dumps({"consumer_id": "c1", "task_id": task["id"], "outcome": "completed",
                           "lease": task["lease"], "result": result})
        answer = await client.post("/api/v1/internal/finish", data=body,
                                   headers={**CONSUMER, "Content-Type": "application/json"})
        assert answer.status in (400, 422), await answer.text()
        assert (await answer.json())["field"] == field
        stored = await repo.get_task(int(task["id"]))
        assert stored is not None and stored.status.value == "processing"


async def test_metrics_are_closed_with_reads(repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(_settings(db_url, open_reads=False)) as client:
        assert (await client.get("/metrics")).status == 401
        assert (await client.get("/metrics", headers=WRITE)).status == 200
    async with running_producer(_settings(db_url)) as client:
        assert (await client.get("/metrics")).status == 200


async def test_readyz_does_not_show_the_database_error() -> None:
    dead = DbUrl.parse("mysql://scott:tiger@127.0.0.1:1/none")
    client = TestClient(TestServer(create_app(producer_settings(dead))))
    await client.start_server()
    try:
        answer = await client.get("/readyz")
        assert answer.status == 503
        body = await answer.json()
        assert body == {"status": "unready", "database": "unreachable"}
    finally:
        await client.close()


def test_check_config_never_prints_the_database_password() -> None:
    env = {**os.environ, "BISECT_DB_URL": "mysql://bisect:s3cr3t-pw@db.example:3306/bisect",
           "BISECT_API_TOKENS": "api-token-value", "BISECT_CONSUMER_TOKENS": "consumer-value"}
    done = subprocess.run([sys.executable, "-m", "producer.main", "--check-config"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "db.example" in output
    for secret in ("s3cr3t-pw", "api-token-value", "consumer-value"):
        assert secret not in output


def test_placeholder_tokens_are_refused_at_start() -> None:
    base = {"BISECT_DB_URL": "mysql://root@127.0.0.1/x"}
    with pytest.raises(ConfigError, match="BISECT_API_TOKENS"):
        ProducerSettings.from_env({**base, "BISECT_API_TOKENS": "change-me-api-token",
                                   "BISECT_CONSUMER_TOKENS": "fine-token"})
    with pytest.raises(ConfigError, match="BISECT_CONSUMER_TOKENS"):
        ProducerSettings.from_env({**base, "BISECT_API_TOKENS": "fine-token",
                                   "BISECT_CONSUMER_TOKENS": "change-me-consumer-token"})


def test_producer_testers_setting() -> None:
    base = {"BISECT_DB_URL": "mysql://root@127.0.0.1/x", "BISECT_API_TOKENS": "a",
            "BISECT_CONSUMER_TOKENS": "b"}
    assert ProducerSettings.from_env(base).testers == {"compass"}
    listed = ProducerSettings.from_env({**base, "BISECT_TESTERS": "synth, slow"})
    assert listed.testers == {"compass", "synth", "slow"}
    profiles = ProducerSettings.from_env({**base, "BISECT_DEFAULT_TESTER": "demo",
                                          "BISECT_TESTERS": '{"hang": {"kind": "command"}}'})
    assert profiles.testers == {"compass", "demo", "hang"}
    with pytest.raises(ConfigError, match="BISECT_TESTERS"):
        ProducerSettings.from_env({**base, "BISECT_TESTERS": "rm -rf"})


def test_a_bad_allow_list_entry_stops_the_producer_at_start() -> None:
    base = {"BISECT_DB_URL": "mysql://root@127.0.0.1/x", "BISECT_API_TOKENS": "a",
            "BISECT_CONSUMER_TOKENS": "b"}
    with pytest.raises(ConfigError, match="BISECT_REPO_URL_ALLOW"):
        ProducerSettings.from_env({**base, "BISECT_REPO_URL_ALLOW": "ftp://x/"})
    allowed = ProducerSettings.from_env({**base, "BISECT_REPO_URL_ALLOW": "https://gitee.com/"})
    assert allowed.repo_url_allow == ("https://gitee.com/",)
