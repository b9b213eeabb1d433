"""The producer's aiohttp application factory and its background loops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import structlog
from aiohttp import web

from common.db import Database
from common.errors import DatabaseUnavailable
from common.repository import Repository
from common.supervise import RetryPolicy, sleep_or_stop
from producer.dashboard import ROUTES as dashboard_routes
from producer.dashboard import setup as setup_dashboard
from producer.discovery import JobDiscovery
from producer.errors import WriterConflict
from producer.leases import load_or_create_key
from producer.legacy_routes import ROUTES as legacy_routes
from producer.metrics import ProducerMetrics
from producer.middleware import error_middleware, guard, metrics_middleware
from producer.openapi import ROUTE_TABLE_KEY
from producer.routes import ROUTES, Route
from producer.settings import ProducerSettings
from producer.singleton import WriterGuard
from producer.state import STATE_KEY, ProducerState
from producer.writer import TaskStateWriter

log = structlog.get_logger(__name__)

SHUTDOWN_WAIT_S = 10.0


def extra_route_tables() -> Iterable[Route]:
    """compass-ci's routes and the dashboard's."""
    return (*legacy_routes, *dashboard_routes)


async def _become_writer(state: ProducerState, guard_: WriterGuard) -> None:
    """Wait for the database, take the writer role, then keep it and sweep leases."""
    policy = RetryPolicy(base_s=0.5, cap_s=10.0)
    attempt = 0
    while not state.stop.is_set():
        try:
            await state.repo.require_schema()
            await guard_.acquire()
            # Only the writer creates the lease key, so two producers never make two.
            state.writer.set_lease_key(await load_or_create_key(state.repo))
            await state.writer.load_holdings()
            break
        except DatabaseUnavailable as exc:
            attempt += 1
            log.warning("writer_waiting_for_database", error=str(exc), attempt=attempt)
            if await sleep_or_stop(state.stop, policy.delay(attempt)):
                return
    else:
        return
    state.writer.start()
    state.writer_ready.set()
    log.info("producer_ready", instance_id=guard_.instance_id)
    state.supervisor.start("writer_heartbeat", lambda: _keep_writer(state, guard_))
    state.supervisor.start("lease_sweeper", lambda: _sweep_leases(state))
    if state.settings.discovery_enabled:
        discovery = JobDiscovery(state.repo, state.writer, state.settings, state.metrics)
        state.supervisor.start("job_discovery", lambda: discovery.run(state.stop))


async def _keep_writer(state: ProducerState, guard_: WriterGuard) -> None:
    failures = 0
    while not await sleep_or_stop(state.stop, state.settings.writer_heartbeat_s):
        try:
            await guard_.refresh()
            failures = 0
        except DatabaseUnavailable as exc:
            failures += 1
            # Consumers cannot renew leases while the database is away either.
            state.writer.grant_grace()
            log.warning("writer_heartbeat_failed", error=str(exc), failures=failures)
        except WriterConflict:
            state.writer_ready.clear()
            raise


async def _sweep_leases(state: ProducerState) -> None:
    while not await sleep_or_stop(state.stop, state.settings.sweep_interval_s):
        try:
            report = await state.writer.sweep()
            state.metrics.lease_expired.inc(len(report.requeued) + len(report.failed))
        except DatabaseUnavailable as exc:
            # Heartbeats failed too while the database was away: every lease gets one full
            # period after it is back, as after a producer restart, before any is expired.
            state.writer.grant_grace()
            log.warning("lease_sweep_failed", error=str(exc))


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE_KEY]
    guard_ = WriterGuard(state.repo, state.settings.instance_id,
                         state.settings.writer_heartbeat_s)
    state.supervisor.start("become_writer", lambda: _become_writer(state, guard_))
    yield
    state.stop.set()
    state.writer_ready.clear()
    state.writer.close()
    await state.supervisor.stop(SHUTDOWN_WAIT_S)
    try:
        # Let a successor take over at once; shielded so a second signal cannot cut it.
        await asyncio.shield(guard_.release())
    except Exception as exc:
        log.warning("writer_release_failed", error=str(exc))
    await state.db.close()


def create_app(settings: ProducerSettings) -> web.Application:
    """Build the producer application; background loops start with the app."""
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[metrics_middleware, error_middleware])
    db = Database(settings.db_url, maxsize=10)
    repo = Repository(db)
    writer = TaskStateWriter(repo, lease_s=settings.lease_s, max_attempts=settings.max_attempts,
                             max_claims_per_consumer=settings.max_claims_per_consumer,
                             max_long_polls=settings.max_long_polls,
                             default_tester=settings.default_tester,
                             repo_url_allow=settings.repo_url_allow)
    app[STATE_KEY] = ProducerState(settings=settings, db=db, repo=repo, writer=writer,
                                   metrics=ProducerMetrics())
    setup_dashboard(app)
    table = [*ROUTES, *extra_route_tables()]
    app[ROUTE_TABLE_KEY] = table
    for route in table:
        app.router.add_route(route.method, route.path,
                             guard(route.access, route.handler, route.max_body))
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_end_long_polls)
    return app


async def _end_long_polls(app: web.Application) -> None:
    """Long-polling claims answer at once when the producer stops."""
    state = app[STATE_KEY]
    state.stop.set()
    state.writer.close()
