"""Helpers to run a producer app in-process against a test database."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from common.models import Job
from common.settings import DbUrl
from producer.app import create_app
from producer.settings import ProducerSettings
from producer.state import STATE_KEY

API_TOKEN = "api-secret-token"
CONSUMER_TOKEN = "consumer-secret-token"
WRITE = {"Authorization": f"Bearer {API_TOKEN}"}
CONSUMER = {"Authorization": f"Bearer {CONSUMER_TOKEN}"}


def producer_settings(db_url: DbUrl, **overrides: Any) -> ProducerSettings:
    base = ProducerSettings(
        db_url=db_url, api_tokens=frozenset({API_TOKEN}),
        consumer_tokens=frozenset({CONSUMER_TOKEN}), repo_url_allow=("https://git.example/",),
        discovery_enabled=False, writer_heartbeat_s=0.2, sweep_interval_s=0.1,
        instance_id="test-producer")
    return dataclasses.replace(base, **overrides)


@asynccontextmanager
async def running_producer(settings: ProducerSettings) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(settings)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        await asyncio.wait_for(app[STATE_KEY].writer_ready.wait(), 15)
        yield client
    finally:
        await client.close()


def failed_job(job_id: int, errids: str, *, suite: str = "pkgbuild", stage: str = "finish",
               health: str = "fail", repo: str = "https://git.example/proj.git",
               commit: str = "c0ffee", submit_time: int = 0) -> Job:
    return Job(id=job_id, suite=suite, category="build", submit_time=submit_time or 1_900_000_000,
               job_stage=stage, job_health=health, job_data_readiness="complete",
               errids=tuple(errids.split()),
               data={"upstream_url": repo, "upstream_commit": commit, "upstream_repo": "proj",
                     "result_root": f"/result/{job_id}"})
