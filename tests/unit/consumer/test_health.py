"""The health port: liveness, readiness that says which dependency is up, metrics."""

from __future__ import annotations

import time

from aiohttp.test_utils import TestClient, TestServer

from consumer.health import HealthState, Metrics, make_health_app


async def _ok() -> None:
    return None


async def _down() -> None:
    raise ConnectionError("refused")


def state(*, producer_last_ok: float | None, db_ok: bool, probe_ok: bool = False,
          stopping: bool = False) -> HealthState:
    return HealthState(metrics=Metrics(2), producer_last_ok=lambda: producer_last_ok,
                       probe_producer=_ok if probe_ok else _down,
                       probe_database=_ok if db_ok else _down, stopping=lambda: stopping)


async def _get(health: HealthState, path: str) -> tuple[int, object]:
    async with TestClient(TestServer(make_health_app(health))) as client:
        response = await client.get(path)
        body = await (response.json() if path != "/metrics" else response.text())
        return response.status, body


async def test_healthz() -> None:
    assert await _get(state(producer_last_ok=None, db_ok=False), "/healthz") == (
        200, {"status": "ok"})


async def test_readyz_says_which_dependency_is_up() -> None:
    status, body = await _get(state(producer_last_ok=time.monotonic(), db_ok=False), "/readyz")
    assert status == 200 and isinstance(body, dict)
    assert body["producer"] == "ok" and body["database"].startswith("unreachable")
    status, body = await _get(state(producer_last_ok=None, db_ok=True), "/readyz")
    assert status == 200 and isinstance(body, dict)
    assert body["producer"].startswith("unreachable") and body["database"] == "ok"
    status, body = await _get(state(producer_last_ok=None, db_ok=False), "/readyz")
    assert status == 503
    status, _ = await _get(state(producer_last_ok=None, db_ok=True, stopping=True), "/readyz")
    assert status == 503


async def test_metrics_are_private_and_exported() -> None:
    health = state(producer_last_ok=None, db_ok=True)
    health.metrics.claims.inc()
    health.metrics.step_duration.observe(3)
    status, text = await _get(health, "/metrics")
    assert status == 200 and isinstance(text, str)
    assert "bisect_consumer_claims_total 1.0" in text
    assert "bisect_consumer_slots 2.0" in text
    assert "bisect_consumer_step_duration_seconds_count 1.0" in text
    assert "bisect_consumer_lease_losses_total 0.0" in text
    assert "python_gc" not in text  # a private registry, not the global one
