"""Connection deadlines at the producer's HTTP edge (issue 15, finding 4).

aiohttp closes a kept-alive connection that stays idle after a request (``keepalive_timeout``)
but waits forever for the *first* request head of a connection: 2,000 connections that send
nothing, or send a header line a minute, stay open. :func:`close_slow_connections` closes
every connection that has not sent one complete request head within
``BISECT_HEADER_TIMEOUT_S``. Body reads have their own deadline (``producer.middleware``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from producer.settings import ProducerSettings

log = structlog.get_logger(__name__)

# A body the handler did not read (a 401, a 413) is drained at most this long before the
# connection is closed.
MAX_LINGER_S = 2.0


def runner_options(settings: ProducerSettings) -> dict[str, Any]:
    """``web.AppRunner`` keyword arguments: idle keep-alive and the unread-body drain."""
    return {"keepalive_timeout": settings.keepalive_s,
            "lingering_time": min(MAX_LINGER_S, settings.body_timeout_s)}


def _heads_received(handler: Any) -> int:
    # aiohttp's RequestHandler counts the request heads it has parsed; when a future aiohttp
    # drops the attribute, treat the connection as served (never closed by us) rather than
    # close good connections (tests/integration/test_http_edge.py notices either way).
    return int(getattr(handler, "_request_count", 1))


async def close_slow_connections(server: web.Server, header_timeout_s: float,
                                 stop: asyncio.Event,
                                 on_closed: Callable[[int], object] | None = None) -> None:
    """Until ``stop``: close connections without a complete request head after
    ``header_timeout_s`` (checked a few times per period); ``on_closed(count)`` counts them."""
    loop = asyncio.get_running_loop()
    first_seen: dict[int, tuple[Any, float]] = {}
    tick = max(0.05, header_timeout_s / 4)
    while not stop.is_set():
        now = loop.time()
        alive: dict[int, tuple[Any, float]] = {}
        closed = 0
        for handler in server.connections:
            if _heads_received(handler) > 0:
                continue
            _, since = first_seen.get(id(handler), (handler, now))
            if now - since >= header_timeout_s:
                handler.force_close()
                closed += 1
            else:
                alive[id(handler)] = (handler, since)
        first_seen = alive
        if closed:
            log.info("slow_connections_closed", count=closed, header_timeout_s=header_timeout_s)
            if on_closed is not None:
                on_closed(closed)
        try:
            await asyncio.wait_for(stop.wait(), tick)
        except TimeoutError:
            pass


def start_connection_guard(runner: web.AppRunner, settings: ProducerSettings,
                           stop: asyncio.Event,
                           on_closed: Callable[[int], object] | None = None
                           ) -> asyncio.Task[None]:
    """Run :func:`close_slow_connections` for ``runner``'s server (after ``setup()``)."""
    server = runner.server
    assert server is not None, "start the guard after runner.setup()"
    return asyncio.create_task(
        close_slow_connections(server, settings.header_timeout_s, stop, on_closed),
        name="connection_guard")
