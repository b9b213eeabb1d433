"""``bisect-admin demo``: the whole pipeline on this machine, without Docker.

It builds a sample git repository with a regression at a known commit, writes a failed job
for it into the jobs table and a whitelist row into the regression table, starts a producer
and two consumers as real processes, waits while discovery finds the job and a consumer
bisects it, and prints the report. With ``--keep-running`` the services stay up (dashboard,
``bisect-cli``, ``curl``) until Ctrl-C; either way everything is stopped within a grace period
and nothing is left in the temp directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pymysql

from admin.db_errors import explain
from admin.demo_access import DemoAccess, env_file_path
from admin.launcher import ServiceProcess, http_json, wait_http_ok
from common.compass_job import job_row
from common.db import Database
from common.errors import BisectError
from common.ids import stable_id
from common.models import Regression
from common.private_db import PrivateMariaDB, free_port
from common.repository import Repository
from common.settings import DbUrl, Dialect, Env

DEMO_ERROR_ID = "last_state.test.demo.exit_code.1"
DEMO_SUITE = "demo"
DEMO_TESTER = "demo"
# Fixed job ids on a fresh private database, so the README's lines work as written; on a
# database of the user's, ids from the clock keep runs apart.
FRESH_JOB_ID = 1001
DEFAULT_PORT = 8080
DEFAULT_MANTICORE_URL = "manticore://127.0.0.1:9306"
WAIT_FOR_RESULT_S = 300.0
CONSUMER_GRACE_S = 5
# Consumers stop within CONSUMER_GRACE_S, the producer within its shutdown wait (10 s).
STOP_GRACE_S = 20.0


class DemoError(BisectError):
    """The demo cannot run; the message says why and what to do."""


@dataclass(frozen=True)
class DemoOptions:
    commits: int = 200
    bad_index: int = 137
    keep_running: bool = False
    consumers: int = 2
    port: int = DEFAULT_PORT
    db: str = "mariadb"  # or "manticore"
    db_url: str | None = None


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _job_row(job_id: int, errids: tuple[str, ...], repo_path: Path, head: str
             ) -> dict[str, Any]:
    """A finished, failed job in compass-ci's ``jobs`` layout (branch ``compact``)."""
    params = {"_url": str(repo_path), "commit": head, "project": "demo-project"}
    doc = {"suite": DEMO_SUITE, "category": "functional", "my_account": "demo",
           "testbox": "localhost", "tbox_group": "localhost", "os": "debian",
           "os_version": "12", "os_arch": "x86_64", "arch": "x86_64", "osv": "debian@12",
           "program": {"makepkg": params},
           "pp": {"makepkg": {k: v for k, v in params.items() if k != "_url"}},
           "upstream_branch": "main", "result_root": f"/result/demo/{job_id}"}
    # compass-ci marks a job whose test failed "abort": what discovery looks for by default.
    return job_row(job_id, doc, stage="finish", health="abort", readiness="complete",
                   errids=errids, submit_time=int(time.time()),
                   stats={errid: 1 for errid in errids})


def _job_rows(job_id: int, repo_path: Path, head: str) -> list[dict[str, Any]]:
    """The failed job discovery bisects, and a second one (no error ids recorded, so
    discovery leaves it alone) for the user to submit."""
    return [_job_row(job_id, (DEMO_ERROR_ID,), repo_path, head),
            _job_row(job_id + 1, (), repo_path, head)]


async def _seed(db_url: DbUrl, repo_path: Path, head: str, job_id: int) -> None:
    db = Database(db_url, maxsize=2, attempts=2)
    repo = Repository(db)
    try:
        await repo.create_missing_tables()
        await repo.add_missing_columns()
        if DEMO_ERROR_ID not in await repo.regression_whitelist():
            # The row a person adds in compass-ci to say "bisect this error id".
            now = int(time.time())
            await repo.insert_regression(Regression(
                id=stable_id("bisect-demo-regression", DEMO_ERROR_ID), errid=DEMO_ERROR_ID,
                category="functional", first_seen=now, last_seen=now, valid="true"))
        await repo.insert_job_rows(_job_rows(job_id, repo_path, head))
    finally:
        await db.close()


async def _ping(db_url: DbUrl) -> None:
    db = Database(db_url, maxsize=1, attempts=1)
    try:
        await db.ping()
    finally:
        await db.close()


def _check_reachable(db_url: DbUrl) -> None:
    try:
        asyncio.run(_ping(db_url))
    except (BisectError, pymysql.err.MySQLError, OSError) as exc:
        line = explain(exc, db_url) or str(exc)
        if db_url.dialect is Dialect.MANTICORE:
            line = (f"no Manticore reachable at {db_url.host}:{db_url.port}: start one "
                    "(docker run -d -p 9306:9306 manticoresearch/manticore) or pass "
                    f"--db-url manticore://host:9306 ({line})")
        raise DemoError(line) from None


def _database(options: DemoOptions, work: Path) -> tuple[DbUrl, PrivateMariaDB | None]:
    """The database to run on: Manticore, the user's BISECT_DB_URL, or a private MariaDB."""
    env = Env()
    if options.db == "manticore":
        from_env = env.raw("BISECT_DB_URL") or ""
        manticore_url = options.db_url or (
            from_env if from_env.startswith("manticore://") else DEFAULT_MANTICORE_URL)
        url = DbUrl.parse(manticore_url, "--db-url")
        _check_reachable(url)
        return url, None
    raw = options.db_url or env.raw("BISECT_DB_URL")
    if raw is not None:
        url = DbUrl.parse(raw, "--db-url" if options.db_url else "BISECT_DB_URL")
        _check_reachable(url)
        return url, None
    _say("BISECT_DB_URL is not set: starting a private MariaDB server")
    private = PrivateMariaDB(work / "db")
    private.start()
    return DbUrl.parse(private.url), private


def _port(wanted: int) -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", wanted))
            return wanted
        except OSError:
            pass
    port = free_port()
    _say(f"port {wanted} is taken: the producer listens on {port} instead")
    return port


def _start_services(options: DemoOptions, db_url: DbUrl, work: Path, port: int,
                    api_token: str, sample: Path) -> list[ServiceProcess]:
    base = f"http://127.0.0.1:{port}"
    consumer_token = secrets.token_hex(16)
    # The sample is a local path: only a rule naming it lets a task clone it.
    common_env = {"BISECT_DB_URL": db_url.to_url(), "BISECT_LOG_LEVEL": "info",
                  "BISECT_REPO_URL_ALLOW": str(sample)}
    services = [ServiceProcess("producer", "producer.main", {
        **common_env, "BISECT_PORT": str(port), "BISECT_HOST": "127.0.0.1",
        "BISECT_API_TOKENS": api_token, "BISECT_CONSUMER_TOKENS": consumer_token,
        "BISECT_DISCOVERY_INTERVAL_S": "1", "BISECT_DISCOVERY_TESTER": DEMO_TESTER,
        "BISECT_DEFAULT_TESTER": DEMO_TESTER}, work / "logs" / "producer.log").start()]
    wait_http_ok(f"{base}/readyz", services[0])
    testers = {DEMO_TESTER: {"kind": "command", "command": "sh check.sh", "timeout": 60}}
    for number in range(1, options.consumers + 1):
        services.append(ServiceProcess(f"consumer-{number}", "consumer.main", {
            **common_env, "BISECT_PRODUCER_URL": base,
            "BISECT_CONSUMER_TOKEN": consumer_token, "BISECT_CONSUMER_SLOTS": "1",
            "BISECT_CONSUMER_ID": f"demo-consumer-{number}",
            "BISECT_TESTERS": json.dumps(testers), "BISECT_CONSUMER_HTTP_PORT": "0",
            "BISECT_CACHE_DIR": str(work / "cache"),
            "BISECT_WORK_DIR": str(work / f"work-{number}"),
            "BISECT_POLL_MAX_S": "1", "BISECT_GRACE_S": str(CONSUMER_GRACE_S)},
            work / "logs" / f"consumer-{number}.log").start())
    return services


def _wait_for_task(base: str, job_id: int, deadline: float) -> dict[str, Any] | None:
    last_status = ""
    while time.monotonic() < deadline:
        status, body = http_json(f"{base}/api/v1/tasks?bad_job_id={job_id}")
        tasks = body.get("tasks", []) if status == 200 and isinstance(body, dict) else []
        if tasks:
            task = tasks[0]
            progress = f"{task['status']} step {task['current_step']}"
            if progress != last_status:
                _say(f"task {task['id']}: {progress}")
                last_status = progress
            if task["status"] in ("completed", "failed", "cancelled"):
                return dict(task)
        time.sleep(0.5)
    return None


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # `kill <demo>` stops it the way Ctrl-C does


def _stay_up(services: list[ServiceProcess]) -> None:
    """Until Ctrl-C (or SIGTERM), or until a service dies on its own."""
    while True:
        dead = [s for s in services if not s.alive()]
        if dead:
            _say(f"{dead[0].name} exited on its own; log: {dead[0].log_path}")
            return
        time.sleep(0.5)


@contextmanager
def _no_interrupts() -> Iterator[None]:
    """Cleanup runs to its end: a second Ctrl-C must not leave processes or files behind."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_all(services: list[ServiceProcess], grace_s: float) -> None:
    """SIGTERM every service at once, wait up to ``grace_s``, then SIGKILL what is left."""
    if not services:
        return
    _say(f"stopping {len(services)} services (at most {grace_s:.0f} s)")
    for service in services:
        service.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for service in services:
        code = service.wait(max(0.1, deadline - time.monotonic()))
        if code is None:
            service.kill_group()
            _say(f"{service.name} did not stop in time: killed")
        else:
            _say(f"{service.name} stopped (exit {code})")


def _print_log_tails(work: Path) -> None:
    for log in sorted((work / "logs").glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-15:]
        print(f"--- last lines of {log.name}", *lines, sep="\n", file=sys.stderr)


def _demo(options: DemoOptions, work: Path, services: list[ServiceProcess],
          access_file: Path) -> int:
    from consumer.engine.synthetic import make_repo  # the demo's sample history

    db_url, private = _database(options, work)
    try:
        _say(f"database: {db_url.redacted()}")
        sample = make_repo(work / "sample-repo", options.commits, options.bad_index,
                           error_id=DEMO_ERROR_ID, merges=options.commits // 20)
        _say(f"sample repository: {sample.path} ({options.commits} commits, regression at "
             f"{sample.culprit[:12]})")
        job_id = FRESH_JOB_ID if private is not None else (
            int(time.time() * 1000) % (10**12) + 10**12)
        asyncio.run(_seed(db_url, sample.path, sample.head, job_id))
        _say(f"failed job {job_id} with error id {DEMO_ERROR_ID} written to the jobs table")

        port = _port(options.port)
        base = f"http://127.0.0.1:{port}"
        api_token = secrets.token_hex(16)
        services += _start_services(options, db_url, work, port, api_token, sample.path)
        _say(f"producer on {base} and {options.consumers} consumers started; "
             "waiting for discovery and the bisection")
        _say(f"API token: {api_token}")
        task = _wait_for_task(base, job_id, time.monotonic() + WAIT_FOR_RESULT_S)
        if task is None:
            _say(f"no result within {WAIT_FOR_RESULT_S:.0f} s")
            _print_log_tails(work)
            return 1
        status, report = http_json(f"{base}/api/v1/tasks/{task['id']}/report")
        print()
        print(report if status == 200 else json.dumps(task, indent=2))
        print()
        found = task.get("bad_commit")
        ok = task["status"] == "completed" and found == sample.culprit
        _say(f"known culprit {sample.culprit}; found {found}: "
             f"{'MATCH' if ok else 'MISMATCH'}")
        if not ok:
            _print_log_tails(work)
        if not options.keep_running:
            _say("the services stop now; `bisect-admin demo --keep-running` leaves them up "
                 "for the dashboard, bisect-cli and curl")
            return 0 if ok else 1
        access = DemoAccess(base, api_token, job_id + 1, DEMO_ERROR_ID)
        access.write_env_file(access_file)
        _say(f"dashboard: {base}/dashboard/tasks/{task['id']} (sign-in not needed for reads)")
        _say(f"bisect-cli's URL and API token are in {access_file}; in another terminal:")
        for line in access.lines(access_file):
            print(f"    {line}", flush=True)
        _say("the services stay up; press Ctrl-C to stop them")
        try:
            _stay_up(services)
        except KeyboardInterrupt:
            print(flush=True)
        return 0 if ok else 1
    finally:
        with _no_interrupts():
            _stop_all(services, STOP_GRACE_S)
            services.clear()
            if private is not None:
                private.close()


def run_demo(options: DemoOptions) -> int:
    work = Path(tempfile.mkdtemp(prefix="bisect-demo-"))
    services: list[ServiceProcess] = []
    access_file = env_file_path()
    previous_term = signal.signal(signal.SIGTERM, _on_sigterm)
    # Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored (a background job
    # of a script): the demo must always be stoppable.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _demo(options, work, services, access_file)
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    finally:
        with _no_interrupts():
            _stop_all(services, STOP_GRACE_S)  # when interrupted before _demo's own cleanup
            access_file.unlink(missing_ok=True)
            shutil.rmtree(work, ignore_errors=True)
            signal.signal(signal.SIGTERM, previous_term)
            signal.signal(signal.SIGINT, previous_int)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bisect-admin demo",
        description="Run the whole pipeline on this machine: a sample repository with a "
                    "known regression, a producer and two consumers as processes.")
    parser.add_argument("--keep-running", action="store_true",
                        help="leave the services up after the result (dashboard, bisect-cli, "
                             "curl) until Ctrl-C")
    parser.add_argument("--commits", type=int, default=200,
                        help="commits in the sample repository (default 200, at least 10)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"the producer's port on 127.0.0.1 (default {DEFAULT_PORT}; "
                             "a free one when taken)")
    parser.add_argument("--db", choices=("mariadb", "manticore"), default="mariadb",
                        help="mariadb: BISECT_DB_URL, or a private MariaDB when it is unset "
                             "(default); manticore: a Manticore Search server (--db-url)")
    parser.add_argument("--db-url", metavar="URL",
                        help="the database to use instead of BISECT_DB_URL (with --db "
                             f"manticore, default {DEFAULT_MANTICORE_URL})")
    return parser


def main_demo(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.commits < 10:
        parser.error("--commits must be at least 10")
    if not 0 < args.port < 65536:
        parser.error("--port must be from 1 to 65535")
    try:
        return run_demo(DemoOptions(
            commits=args.commits, bad_index=args.commits * 2 // 3,
            keep_running=args.keep_running, port=args.port, db=args.db, db_url=args.db_url))
    except (BisectError, pymysql.err.MySQLError, OSError) as exc:
        print(f"bisect-admin demo: {explain(exc, None) or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main_demo(sys.argv[1:]))
