"""``bisect-producer``: run the HTTP API, job discovery and the task-state writer."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from collections.abc import Sequence
from typing import Any

import structlog
from aiohttp import web

from common.errors import ConfigError
from common.logging import configure_logging
from producer.app import create_app
from producer.edge import runner_options, start_connection_guard
from producer.settings import ProducerSettings
from producer.state import STATE_KEY

log = structlog.get_logger(__name__)


async def serve(settings: ProducerSettings) -> int:
    app = create_app(settings)
    state = app[STATE_KEY]
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0,
                           **runner_options(settings))
    await runner.setup()
    guard_stop = asyncio.Event()
    connection_guard = start_connection_guard(runner, settings, guard_stop,
                                              state.metrics.slow_connections_closed.inc)
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    log.info("producer_started", host=settings.host, port=settings.port,
             db=settings.db_url.redacted(), instance_id=settings.instance_id)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    stop_wait = asyncio.create_task(stop_requested.wait())
    fail_wait = asyncio.create_task(state.supervisor.failed.wait())
    await asyncio.wait({stop_wait, fail_wait}, return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()
    fail_wait.cancel()
    failure = state.supervisor.failure
    log.info("producer_stopping", reason=failure or "signal")
    guard_stop.set()
    await connection_guard
    await runner.cleanup()
    if failure:
        print(f"bisect-producer: stopped: {failure}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bisect-producer",
        description="bisect-task producer: HTTP API, job discovery, task-state writer. "
                    "Configured by BISECT_* environment variables (see README).")
    parser.add_argument("--check-config", action="store_true",
                        help="check the settings, print them (secrets hidden) and exit")
    args = parser.parse_args(argv)
    configure_logging("producer")
    try:
        settings = ProducerSettings.from_env()
    except ConfigError as exc:
        print(f"bisect-producer: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        for name, value in shown_settings(settings).items():
            print(f"{name} = {value}")
        return 0
    return asyncio.run(serve(settings))


def shown_settings(settings: ProducerSettings) -> dict[str, Any]:
    """The settings as ``--check-config`` prints them: the database URL without its
    password, and token counts instead of tokens."""
    shown: dict[str, Any] = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if field.name == "db_url":
            value = settings.db_url.redacted()
        elif field.name.endswith("_tokens"):
            value = f"{len(value)} token(s)"
        elif isinstance(value, frozenset):
            value = ", ".join(sorted(value))
        shown[field.name] = value
    shown["testers"] = ", ".join(sorted(settings.testers))
    return shown


if __name__ == "__main__":
    sys.exit(main())
