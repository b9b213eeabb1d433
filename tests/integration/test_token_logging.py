"""Tokens and lease secrets never reach a log line, whatever happens to the request."""

from __future__ import annotations

import io

import structlog

from common.logging import configure_logging
from common.repository import Repository
from common.settings import DbUrl
from tests.producer_support import (
    API_TOKEN,
    CONSUMER,
    CONSUMER_TOKEN,
    WRITE,
    producer_settings,
    running_producer,
)


async def test_tokens_never_appear_in_logs(repo: Repository, db_url: DbUrl) -> None:
    stream = io.StringIO()
    configure_logging("producer", "debug", stream=stream)
    settings = producer_settings(db_url, known_testers=frozenset({"demo"}))
    try:
        async with running_producer(settings) as client:
            body = {"bad_job_id": "t1", "error_id": "e.1", "repo_url": "https://git.example/a",
                    "bad_commit": "abc1234", "tester": "demo"}
            await client.post("/api/v1/tasks", json=body, headers=WRITE)
            await client.post("/api/v1/tasks", json=body,
                              headers={"Authorization": f"Bearer {API_TOKEN}x"})
            claimed = await client.post("/api/v1/internal/claim", headers=CONSUMER, json={
                "consumer_id": "c1", "slots": 1, "testers": ["demo"]})
            (task,) = (await claimed.json())["tasks"]
            lease = task["lease"]
            beat = {"consumer_id": "c1", "leases": {task["id"]: lease}}
            await client.post("/api/v1/internal/heartbeat", headers=CONSUMER, json=beat)
            finish = {"consumer_id": "c1", "task_id": task["id"], "outcome": "completed",
                      "lease": lease + "x", "result": {"bad_commit": "abc1234"}}
            assert (await client.post("/api/v1/internal/finish", headers=CONSUMER,
                                      json=finish)).status == 409
            await client.post("/api/v1/internal/finish", headers=CONSUMER,
                              json={**finish, "lease": lease})
            await client.post("/api/v1/tasks", data="{broken", headers=WRITE)
        structlog.get_logger("test").info("login", token=API_TOKEN, password="p")
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
    text = stream.getvalue()
    assert "task_claimed" in text and "task_finished" in text  # the log was captured
    assert API_TOKEN not in text and CONSUMER_TOKEN not in text
    assert lease not in text
    assert '"token": "***"' in text
