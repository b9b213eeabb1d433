"""The claim and heartbeat loops against a fake producer, fake engines and the real database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from common.repository import Repository
from common.settings import DbUrl
from common.supervise import RetryPolicy
from consumer import profiles
from consumer.client import ProducerClient
from consumer.health import Metrics
from consumer.profiles import BUILTIN
from consumer.settings import ConsumerSettings
from consumer.worker import Worker
from tests.integration.consumer.fakes import (
    FakeProducer,
    journal_lines,
    max_concurrency,
    pid_alive,
    wait_until,
    write_engine,
)


@pytest.fixture
async def producer() -> AsyncIterator[FakeProducer]:
    fake = FakeProducer()
    yield fake
    await fake.close()


def settings_for(db_url: DbUrl, url: str, tmp_path: Path, **overrides: Any
                 ) -> ConsumerSettings:
    tester = {"kind": "command", "command": ["true"], "fp": "",
              "journal": str(tmp_path / "journal"), **overrides.pop("tester", {})}
    base: dict[str, Any] = {
        "db_url": db_url, "producer_url": url, "consumer_id": "test-consumer", "slots": 2,
        "poll_min_s": 0.02, "poll_max_s": 0.1, "grace_s": 5.0, "kill_grace_s": 1.0,
        "http_port": 0, "work_dir": str(tmp_path / "work"), "cache_dir": str(tmp_path / "c"),
        "engine_command": write_engine(tmp_path),
        "testers": {"compass": BUILTIN,
                    "fake": profiles.TesterProfile("fake", "command", tester)}}
    base.update(overrides)
    return ConsumerSettings(**base)


async def run_worker(settings: ConsumerSettings, repo: Repository,
                     body: Any = None) -> tuple[int, Worker]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        client = ProducerClient(session, settings.producer_url, settings.consumer_id,
                                retry=RetryPolicy(base_s=0.01, cap_s=0.05, max_attempts=3))
        worker = Worker(settings, client, repo, Metrics(settings.slots))
        job = asyncio.create_task(worker.run())
        if body is not None:
            await body(worker)
        code = await asyncio.wait_for(job, 30)
    return code, worker


async def test_drain_runs_everything_within_the_slot_limit(
        repo: Repository, db_url: DbUrl, producer: FakeProducer, tmp_path: Path) -> None:
    for task_id in range(1, 6):
        producer.add(task_id)
    producer.add(99, tester="other")  # no profile here: never claimed
    url = await producer.start()
    settings = settings_for(db_url, url, tmp_path, drain=True,
                            tester={"mode": "sleep", "sleep": 0.4})
    code, worker = await run_worker(settings, repo)
    assert code == 0 and worker.drained
    assert sorted(int(f["task_id"]) for f in producer.finishes) == [1, 2, 3, 4, 5]
    assert {f["outcome"] for f in producer.finishes} == {"completed"}
    result = producer.finishes[0]["result"]
    assert (result["bad_commit"], result["first_bad_id"], result["verification"]) == (
        "c2", "job-c2", "held")
    assert max(claim["slots"] for claim in producer.claims) <= 2
    assert producer.max_held <= 2
    assert max_concurrency(tmp_path / "journal") == 2
    assert producer.tasks["99"].status == "wait"
    for task_id in range(1, 6):
        steps = await repo.steps_of_task(task_id)
        assert [(s.attempt, s.seq) for s in steps] == [(1, 1), (1, 2)]
    culprits = await repo.culprits_of("err.x")
    assert [c.first_bad_commit for c in culprits] == ["c2"]


async def test_drain_exits_at_once_when_nothing_waits(
        repo: Repository, db_url: DbUrl, producer: FakeProducer, tmp_path: Path) -> None:
    url = await producer.start()
    code, worker = await run_worker(settings_for(db_url, url, tmp_path, drain=True), repo)
    assert code == 0 and worker.drained and len(producer.claims) == 1


async def test_cancel_via_heartbeat_stops_the_engine(
        repo: Repository, db_url: DbUrl, producer: FakeProducer, tmp_path: Path) -> None:
    producer.add(1)
    producer.add(2, tester="fake")
    url = await producer.start()
    journal = tmp_path / "journal"
    settings = settings_for(db_url, url, tmp_path, tester={"mode": "hang"})

    async def body(worker: Worker) -> None:
        assert await wait_until(lambda: len(journal_lines(journal)) == 2, 10)
        pids = {int(line[2]): int(line[1]) for line in journal_lines(journal)}
        producer.tasks["1"].cancelled = True
        assert await wait_until(lambda: not pid_alive(pids[1]), 4)
        assert await wait_until(lambda: 1 not in worker.running, 4)
        assert pid_alive(pids[2]) and 2 in worker.running
        # The freed slot is used again, but nothing is waiting.
        worker.request_stop()

    settings = settings_for(db_url, url, tmp_path, tester={"mode": "hang"}, grace_s=0.3)
    code, worker = await run_worker(settings, repo, body)
    assert code == 0
    assert [f["task_id"] for f in producer.finishes] == ["2"]  # task 1 never reported
    assert producer.finishes[0]["outcome"] == "released"
    assert worker.metrics.cancellations._value.get() == 1


async def test_stop_releases_running_tasks_after_the_grace(
        repo: Repository, db_url: DbUrl, producer: FakeProducer, tmp_path: Path) -> None:
    for task_id in (1, 2, 3):
        producer.add(task_id)
    url = await producer.start()
    journal = tmp_path / "journal"
    settings = settings_for(db_url, url, tmp_path, tester={"mode": "stubborn"}, grace_s=0.5)
    loop = asyncio.get_running_loop()
    timings: dict[str, float] = {}

    async def body(worker: Worker) -> None:
        assert await wait_until(lambda: len(journal_lines(journal)) == 2, 10)
        timings["stop"] = loop.time()
        worker.request_stop()

    code, worker = await run_worker(settings, repo, body)
    elapsed = loop.time() - timings["stop"]
    assert code == 0
    assert 0.5 <= elapsed < 0.5 + 1.0 + 4.0  # grace + kill grace + slack
    assert sorted((f["task_id"], f["outcome"]) for f in producer.finishes) == [
        ("1", "released"), ("2", "released")]
    assert producer.tasks["3"].status == "wait"
    for line in journal_lines(journal):
        assert not pid_alive(int(line[1]))
    assert not worker.running


async def test_running_work_survives_a_producer_outage(
        repo: Repository, db_url: DbUrl, producer: FakeProducer, tmp_path: Path) -> None:
    producer.add(1)
    url = await producer.start()
    settings = settings_for(db_url, url, tmp_path, drain=True,
                            tester={"mode": "sleep", "sleep": 1.5}, finish_retry_s=20)
    journal = tmp_path / "journal"
    assert producer.server is not None
    port = producer.server.port

    async def body(worker: Worker) -> None:
        assert await wait_until(lambda: len(journal_lines(journal)) == 1, 10)
        await producer.close()  # the producer goes away while the engine runs
        await asyncio.sleep(0.5)
        assert 1 in worker.running
        fresh = FakeProducer(tasks=producer.tasks, finishes=producer.finishes)
        app_url = await _restart(fresh, port)
        assert app_url == url
        producer.server = fresh.server

    code, _ = await run_worker(settings, repo, body)
    assert code == 0
    assert [(f["task_id"], f["outcome"]) for f in producer.finishes] == [("1", "completed")]


async def _restart(fake: FakeProducer, port: int) -> str:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    app = web.Application()
    app.router.add_post("/api/v1/internal/claim", fake.claim)
    app.router.add_post("/api/v1/internal/heartbeat", fake.heartbeat)
    app.router.add_post("/api/v1/internal/finish", fake.finish)
    fake.server = TestServer(app, port=port)
    await fake.server.start_server()
    return str(fake.server.make_url("")).rstrip("/")


async def test_unknown_tester_fails_the_task(
        repo: Repository, db_url: DbUrl, producer: FakeProducer, tmp_path: Path) -> None:
    producer.add(1, tester="fake")
    url = await producer.start()
    settings = settings_for(db_url, url, tmp_path, drain=True)
    settings = ConsumerSettings(**{**settings.__dict__, "testers": {
        "compass": BUILTIN, "fake": settings.testers["fake"]}})
    producer.add(2, git_url="")  # no repository: a bad task
    code, _ = await run_worker(settings, repo)
    assert code == 0
    outcomes = {f["task_id"]: (f["outcome"], f["reason"]) for f in producer.finishes}
    assert outcomes["2"] == ("failed", "bad task: task has no git_url")
    assert outcomes["1"][0] == "completed"



async def test_a_task_timeout_never_exceeds_the_consumers(
        repo: Repository, db_url: DbUrl, producer: FakeProducer, tmp_path: Path) -> None:
    producer.add(1, timeout=7 * 24 * 3600)  # a submitter's week
    url = await producer.start()
    settings = settings_for(db_url, url, tmp_path, drain=True, task_timeout_s=1.0,
                            tester={"mode": "hang"})
    loop = asyncio.get_running_loop()
    started = loop.time()
    code, _ = await run_worker(settings, repo)
    assert code == 0 and loop.time() - started < 15
    (finish,) = producer.finishes
    assert (finish["outcome"], finish["reason"]) == ("failed", "timeout")


async def test_lease_secrets_never_reach_the_consumers_log(
        repo: Repository, db_url: DbUrl, producer: FakeProducer, tmp_path: Path) -> None:
    import io

    import structlog

    from common.logging import configure_logging

    for task_id in (1, 2, 3):
        producer.add(task_id)
    url = await producer.start()
    stream = io.StringIO()
    configure_logging("consumer", "debug", stream=stream)
    try:
        settings = settings_for(db_url, url, tmp_path, drain=True, tester={"mode": "sleep",
                                                                          "sleep": 0.5})
        code, _ = await run_worker(settings, repo)
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
    assert code == 0 and len(producer.finishes) == 3
    assert producer.heartbeats, "the run was long enough to heartbeat"
    text = stream.getvalue()
    assert "task_claimed" in text and "task_finished" in text
    for task in producer.tasks.values():
        assert f"lease-{task.data['id']}-" not in text
