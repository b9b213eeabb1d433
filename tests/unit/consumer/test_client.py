"""The producer client against a scripted in-process HTTP server: shapes, auth, retries.

(aioresponses 0.7.9 cannot build responses for aiohttp 3.14, so a real local server plays
the producer; it also exercises real connection errors.)
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from common.models import FinishOutcome
from common.supervise import RetryPolicy
from consumer.client import (
    CLAIM_PATH,
    FINISH_PATH,
    HEARTBEAT_PATH,
    ProducerClient,
    ProducerProtocolError,
    ProducerRejected,
    ProducerUnavailable,
)

FAST = RetryPolicy(base_s=0.001, cap_s=0.002, max_attempts=3)
DISCONNECT = "disconnect"


@dataclass
class Script:
    """Answers per path, in order; the last one repeats. ``DISCONNECT`` drops the socket."""

    answers: dict[str, list[Any]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)

    def add(self, path: str, *answers: Any) -> None:
        self.answers.setdefault(path, []).extend(answers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, await request.json(),
                              request.headers.get("Authorization", "")))
        queue = self.answers[request.path]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if answer == DISCONNECT:
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        status, body = answer
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status)


@pytest.fixture
async def script() -> AsyncIterator[tuple[Script, ProducerClient]]:
    scripted = Script()
    app = web.Application()
    app.router.add_post("/{tail:.*}", scripted.handle)
    server = TestServer(app)
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield scripted, ProducerClient(session, str(server.make_url("/")), "c-1",
                                       token="secret", retry=FAST)
    await server.close()


def _task(task_id: str = "123", claim: int = 2) -> dict[str, object]:
    return {"id": task_id, "bad_job_id": "j1", "error_id": "e.1", "git_url": "/r",
            "known_bad_commit": "abc", "good_commit": None, "tester": "demo", "timeout": 0,
            "claim": claim, "lease_expires_ms": 1, "extra": {"limits": {"run_budget": 5}},
            "lease": f"secret-of-{task_id}"}


Fixture = tuple[Script, ProducerClient]


async def test_claim_parses_tasks_and_sends_auth(script: Fixture) -> None:
    server, client = script
    server.add(CLAIM_PATH, (200, {"tasks": [_task()], "lease_seconds": 12}))
    answer = await client.claim(2, ["compass", "demo"])
    assert server.requests == [(CLAIM_PATH, {"consumer_id": "c-1", "slots": 2,
                                             "testers": ["compass", "demo"]},
                                "Bearer secret")]
    assert answer.lease_seconds == 12
    task, = answer.tasks
    assert (task.id, task.claim, task.tester, task.timeout) == (123, 2, "demo", None)
    assert task.extra == {"limits": {"run_budget": 5}}
    assert task.lease == "secret-of-123"
    assert "secret-of-123" not in repr(task)  # a logged task never shows its lease
    assert client.last_ok is not None


async def test_claimed_task_without_a_lease_is_a_protocol_error(script: Fixture) -> None:
    server, client = script
    server.add(CLAIM_PATH, (200, {"tasks": [{**_task(), "lease": ""}]}))
    with pytest.raises(ProducerProtocolError, match="lease"):
        await client.claim(1, ["compass"])


async def test_claim_retries_5xx(script: Fixture) -> None:
    server, client = script
    server.add(CLAIM_PATH, (503, "busy"), (500, "oops"), (200, {"tasks": []}))
    answer = await client.claim(1, ["compass"])
    assert answer.tasks == [] and answer.lease_seconds == 30
    assert len(server.requests) == 3


async def test_claim_does_not_retry_a_dropped_request(script: Fixture) -> None:
    # The producer may have handed tasks out before the connection broke.
    server, client = script
    server.add(CLAIM_PATH, DISCONNECT, (200, {"tasks": [_task()]}))
    with pytest.raises(ProducerUnavailable):
        await client.claim(1, ["compass"])
    assert len(server.requests) == 1


async def test_connection_refused_is_retried_then_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with aiohttp.ClientSession() as session:
        client = ProducerClient(session, f"http://127.0.0.1:{port}", "c-1", retry=FAST)
        with pytest.raises(ProducerUnavailable, match="cannot connect"):
            await client.claim(1, ["compass"])
        with pytest.raises(ProducerUnavailable):
            await client.probe()
    assert client.last_error is not None and client.last_ok is None


async def test_gives_up_after_max_attempts(script: Fixture) -> None:
    server, client = script
    server.add(HEARTBEAT_PATH, (500, "no"))
    with pytest.raises(ProducerUnavailable, match="500"):
        await client.heartbeat({1: "s1"})
    assert len(server.requests) == FAST.max_attempts


async def test_4xx_is_rejected_without_retry(script: Fixture) -> None:
    server, client = script
    server.add(CLAIM_PATH, (401, "bad token"))
    with pytest.raises(ProducerRejected, match="401"):
        await client.claim(1, ["compass"])
    assert len(server.requests) == 1


async def test_bad_answer_is_a_protocol_error(script: Fixture) -> None:
    server, client = script
    server.add(CLAIM_PATH, (200, {"tasks": [{"no": "id"}]}), (200, "not json"))
    with pytest.raises(ProducerProtocolError):
        await client.claim(1, ["compass"])
    with pytest.raises(ProducerProtocolError):
        await client.claim(1, ["compass"])


async def test_heartbeat_retries_and_reads_stop_orders(script: Fixture) -> None:
    server, client = script
    server.add(HEARTBEAT_PATH, DISCONNECT, (200, {
        "renewed": ["1"], "stop": [{"task_id": "2", "reason": "cancelled"}, {"bad": 1}],
        "lease_seconds": 9}))
    answer = await client.heartbeat({1: "s1", 2: "s2"})
    assert server.requests[-1][1] == {"consumer_id": "c-1", "leases": {"1": "s1", "2": "s2"}}
    assert answer.renewed == [1]
    assert [(s.task_id, s.reason) for s in answer.stop] == [(2, "cancelled")]
    assert answer.lease_seconds == 9


async def test_finish_completed_and_conflict(script: Fixture) -> None:
    server, client = script
    server.add(FINISH_PATH, (502, "gw"), (200, {"status": "completed", "task": {}}),
               (409, {"error": "not owner"}))
    ok = await client.finish(5, FinishOutcome.COMPLETED, lease="s5",
                             result={"bad_commit": "abc"})
    lost = await client.finish(6, FinishOutcome.FAILED, lease="s6", reason="timeout")
    assert ok.accepted and ok.status == "completed"
    assert not lost.accepted
    assert server.requests[1][1] == {"consumer_id": "c-1", "task_id": "5", "lease": "s5",
                                     "outcome": "completed", "reason": "",
                                     "result": {"bad_commit": "abc"}}
    assert server.requests[2][1]["reason"] == "timeout"


async def test_finish_keeps_retrying_until_its_deadline(script: Fixture) -> None:
    server, client = script
    server.add(FINISH_PATH, *[(503, "down")] * 7, (200, {"status": "wait"}))
    answer = await client.finish(5, FinishOutcome.RELEASED, lease="s5", give_up_after_s=30)
    assert answer.accepted and answer.status == "wait"
    assert len(server.requests) == 8
    server.answers[FINISH_PATH] = [(503, "down")]
    with pytest.raises(ProducerUnavailable):
        await client.finish(5, FinishOutcome.RELEASED, lease="s5", give_up_after_s=0)
