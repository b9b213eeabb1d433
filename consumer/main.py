"""``bisect-consumer``: claims bisection tasks from the producer and runs them.

Exit codes: 0 after a clean stop (SIGTERM/SIGINT, or ``--drain`` with nothing left),
1 when a background loop died or the schema is incomplete, 2 on a configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import Sequence

import aiohttp
import structlog

from common.db import Database
from common.errors import ConfigError, DatabaseUnavailable, SchemaError
from common.logging import configure_logging
from common.repository import Repository
from consumer.client import ProducerClient
from consumer.health import HealthState, Metrics, start_health_server
from consumer.redact import SECRET_NAME, Scrubber, secrets_in
from consumer.settings import ConsumerSettings
from consumer.worker import Worker

log = structlog.get_logger(__name__)

ENV_HELP = """environment (see README for the full table):
  BISECT_PRODUCER_URL, BISECT_CONSUMER_TOKEN, BISECT_DB_URL, BISECT_CONSUMER_ID,
  BISECT_CONSUMER_SLOTS, BISECT_TESTERS_FILE, BISECT_TESTERS, BISECT_CACHE_DIR,
  BISECT_WORK_DIR, BISECT_TASK_TIMEOUT_S, BISECT_TIMEOUT_ACTION, BISECT_GRACE_S,
  BISECT_KILL_GRACE_S, BISECT_POLL_MIN_S, BISECT_POLL_MAX_S, BISECT_CONSUMER_HTTP_HOST,
  BISECT_CONSUMER_HTTP_PORT (0: off), BISECT_PRODUCER_TIMEOUT_S, BISECT_FINISH_RETRY_S,
  BISECT_DRAIN, BISECT_ENGINE_COMMAND, BISECT_LOG_LEVEL, BISECT_LOG_FORMAT,
  BISECT_SANDBOX (auto|user|bwrap|none), BISECT_SANDBOX_USER, BISECT_SANDBOX_PASS_ENV,
  BISECT_CACHE_MAX_GB, BISECT_SCHEDULER_URL, BISECT_COMPASS_ACCOUNT, BISECT_COMPASS_TOKEN
"""


def describe_settings(settings: ConsumerSettings) -> str:
    """The settings for ``--check-config``: every value but the secrets."""
    shown = []
    for item in dataclasses.fields(settings):
        if not item.repr:
            continue
        value = getattr(settings, item.name)
        if item.name == "db_url":
            value = value.redacted()
        shown.append(f"{item.name}={value!r}")
    profiles = {name: p.tester_spec() for name, p in settings.testers.items()}
    known = [settings.token, settings.compass_token, settings.db_url.password,
             *secrets_in(os.environ),
             *(v for spec in profiles.values() for k, v in spec.items()
               if isinstance(v, str) and SECRET_NAME.search(k))]
    return Scrubber(known).text("ConsumerSettings(" + ", ".join(shown) + ")")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bisect-consumer", description=__doc__.splitlines()[2],
        epilog=ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drain", action="store_true",
                        help="run what is waiting, then exit (also BISECT_DRAIN=1)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the settings, print them and exit")
    return parser.parse_args(argv)


async def serve(settings: ConsumerSettings) -> int:
    """Run the consumer until it is stopped; returns the exit code."""
    db = Database(settings.db_url, maxsize=max(4, settings.slots * 2))
    repo = Repository(db)
    metrics = Metrics(settings.slots)
    try:
        await repo.require_schema()
    except SchemaError as exc:
        log.error("schema_incomplete", error=str(exc))
        await db.close()
        return 1
    except DatabaseUnavailable as exc:
        # Work comes from the producer; rows are written when the database is back.
        log.warning("database_unreachable_at_start", error=str(exc))
    timeout = aiohttp.ClientTimeout(total=settings.producer_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = ProducerClient(session, settings.producer_url, settings.consumer_id,
                                token=settings.token)
        worker = Worker(settings, client, repo, metrics)
        loop = asyncio.get_running_loop()
        signals_seen = 0

        def on_signal(signum: int) -> None:
            nonlocal signals_seen
            signals_seen += 1
            log.info("signal_received", signal=signal.Signals(signum).name)
            if signals_seen == 1:
                worker.request_stop()
            else:
                worker.abort()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        health = None
        if settings.http_port:
            state = HealthState(metrics=metrics, producer_last_ok=lambda: client.last_ok,
                                probe_producer=client.probe, probe_database=db.ping,
                                stopping=lambda: worker.stopping)
            health = await start_health_server(state, settings.http_host, settings.http_port)
            log.info("health_listening", host=settings.http_host, port=settings.http_port)
        try:
            code = await worker.run()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            if health is not None:
                await health.cleanup()
            await db.close()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("consumer")
    try:
        settings = ConsumerSettings.from_env()
    except ConfigError as exc:
        print(f"bisect-consumer: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.drain:
        settings = dataclasses.replace(settings, drain=True)
    structlog.contextvars.bind_contextvars(consumer_id=settings.consumer_id)
    if args.check_config:
        print(describe_settings(settings))
        return 0
    if not settings.token:
        log.warning("no_consumer_token", hint="set BISECT_CONSUMER_TOKEN")
    log.info("consumer_starting", producer=settings.producer_url,
             db=settings.db_url.redacted(), slots=settings.slots,
             testers=settings.tester_names, drain=settings.drain)
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
