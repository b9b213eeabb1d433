"""The consumer's small HTTP port: ``/healthz``, ``/readyz`` and ``/metrics``.

Metrics live in a private ``CollectorRegistry`` so several consumers (or tests) in one
process never share counters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

READY_RECENT_S = 60.0  # a producer answer this recent counts as "reachable"
CHECK_TIMEOUT_S = 3.0
_STEP_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)
_BISECT_BUCKETS = (10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400)


class Metrics:
    """Every metric the consumer exports."""

    def __init__(self, slots: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.slots_total = Gauge("bisect_consumer_slots", "Bisection slots", registry=r)
        self.slots_total.set(slots)
        self.slots_busy = Gauge("bisect_consumer_slots_busy", "Slots running a task",
                                registry=r)
        self.claims = Counter("bisect_consumer_claims", "Tasks claimed", registry=r)
        self.claim_requests = Counter("bisect_consumer_claim_requests",
                                      "Claim requests sent", registry=r)
        self.completions = Counter("bisect_consumer_completions",
                                   "Tasks finished as completed", registry=r)
        self.failures = Counter("bisect_consumer_failures", "Tasks finished as failed",
                                ["reason"], registry=r)
        self.releases = Counter("bisect_consumer_releases", "Tasks released", registry=r)
        self.lease_losses = Counter("bisect_consumer_lease_losses",
                                    "Tasks stopped or refused because the lease was lost",
                                    registry=r)
        self.cancellations = Counter("bisect_consumer_cancellations",
                                     "Tasks stopped because they were cancelled", registry=r)
        self.producer_errors = Counter("bisect_consumer_producer_errors",
                                       "Calls to the producer that failed", ["call"],
                                       registry=r)
        self.step_duration = Histogram("bisect_consumer_step_duration_seconds",
                                       "Duration of one tested bisection step",
                                       buckets=_STEP_BUCKETS, registry=r)
        self.bisection_duration = Histogram("bisect_consumer_bisection_duration_seconds",
                                            "Duration of one bisection subprocess",
                                            buckets=_BISECT_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


Check = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class HealthState:
    """What the endpoints look at; ``stopping`` turns readiness off during shutdown."""

    metrics: Metrics
    producer_last_ok: Callable[[], float | None]
    probe_producer: Check
    probe_database: Check
    stopping: Callable[[], bool]


HEALTH_KEY = web.AppKey("health", HealthState)


async def _run_check(check: Check) -> str:
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}: {exc}"[:300]
    return "ok"


async def readiness(state: HealthState) -> tuple[bool, dict[str, Any]]:
    """Ready when the producer or the database is reachable; the body says which."""
    last = state.producer_last_ok()
    if last is not None and time.monotonic() - last < READY_RECENT_S:
        producer = "ok"
    else:
        producer = await _run_check(state.probe_producer)
    database = await _run_check(state.probe_database)
    body: dict[str, Any] = {"producer": producer, "database": database}
    ready = (producer == "ok" or database == "ok") and not state.stopping()
    if state.stopping():
        body["stopping"] = True
    body["ready"] = ready
    return ready, body


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    ready, body = await readiness(request.app[HEALTH_KEY])
    return web.json_response(body, status=200 if ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    payload = request.app[HEALTH_KEY].metrics.render()
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_health_app(state: HealthState) -> web.Application:
    app = web.Application()
    app[HEALTH_KEY] = state
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


async def start_health_server(state: HealthState, host: str, port: int) -> web.AppRunner:
    """Serve the app on ``host:port``; the caller ends it with ``runner.cleanup()``."""
    runner = web.AppRunner(make_health_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
