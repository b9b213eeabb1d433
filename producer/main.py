"""``bisect-producer``: run the HTTP API, job discovery and the task-state writer."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import structlog
from aiohttp import web

from common.errors import ConfigError
from common.logging import configure_logging
from producer.app import create_app
from producer.settings import ProducerSettings
from producer.state import STATE_KEY

log = structlog.get_logger(__name__)


async def serve(settings: ProducerSettings) -> int:
    app = create_app(settings)
    state = app[STATE_KEY]
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
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
    parser.parse_args(argv)
    configure_logging("producer")
    try:
        settings = ProducerSettings.from_env()
    except ConfigError as exc:
        print(f"bisect-producer: configuration error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
