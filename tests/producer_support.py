"""Helpers to run a producer app in-process against a test database."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from common.compass_job import job_row
from common.ids import stable_id
from common.models import Regression
from common.repository import Repository
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


def failed_job(job_id: int, errids: str, *, suite: str = "makepkg", stage: str = "finish",
               health: str = "abort", readiness: str | None = None,
               repo: str = "https://git.example/proj.git", commit: str = "c0ffee",
               submit_time: int = 0) -> dict[str, Any]:
    """A compass-ci build job's row as compass-ci's scheduler writes it (compact layout)."""
    return compass_job_row(job_id, errids, suite=suite, stage=stage, health=health,
                           readiness=readiness, repo=repo, commit=commit,
                           submit_time=submit_time)


def compass_job_row(job_id: int, errids: str, *, suite: str = "makepkg", stage: str = "finish",
                    health: str = "abort", readiness: str | None = None,
                    repo: str = "https://git.example/proj.git", commit: str = "c0ffee",
                    submit_time: int = 0, extra: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    if readiness is None:
        readiness = "complete" if stage == "finish" else ("norun" if stage in (
            "cancel", "abort_invalid", "abort_wait", "abort_provider") else "N/A")
    project = repo.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    params = {"_url": repo, "commit": commit, "project": project}
    doc: dict[str, Any] = {
        "suite": suite, "category": "functional", "my_account": "cci-user", "testbox": "dc",
        "arch": "aarch64", "osv": "openeuler@24.03", "tbox_group": "dc", "os": "openeuler",
        "os_version": "24.03", "os_arch": "aarch64", "program": {"makepkg": dict(params)},
        "pp": {"makepkg": {k: v for k, v in params.items() if k != "_url"}},
        "result_root": f"/result/{suite}/2025-09-25/dc/openeuler-24.03-aarch64/{job_id}",
        **(extra or {}),
    }
    errid_list = tuple(errids.split())
    return job_row(job_id, doc, stage=stage, health=health, readiness=readiness,
                   errids=errid_list if readiness != "N/A" else (),
                   submit_time=submit_time or 1_900_000_000,
                   stats={e: 1 for e in errid_list})


async def whitelist(repo: Repository, errids: Iterable[str], *, valid: str = "true") -> None:
    """Rows of compass-ci's regression table, as a person or compass-ci writes them."""
    for errid in errids:
        await repo.insert_regression(Regression(
            id=stable_id("compass-regression", errid, valid), errid=errid,
            category="functional", first_seen=1_700_000_000, last_seen=1_700_000_000,
            valid=valid))
