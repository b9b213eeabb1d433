"""``bisect-admin demo``: the whole pipeline on this machine, without Docker.

It builds a sample git repository with a regression at a known commit, writes a failed job
for it into the jobs table and a whitelist row into the regression table, starts a producer
and two consumers as real processes, waits while discovery finds the job and a consumer
bisects it, prints the report and the dashboard URL, and stops everything cleanly.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.db import Database
from admin.launcher import ServiceProcess, http_json, wait_http_ok
from common.models import Job, Regression
from common.private_db import PrivateMariaDB, free_port
from common.repository import Repository
from common.settings import DbUrl, Env

DEMO_ERROR_ID = "last_state.test.demo.exit_code.1"
DEMO_SUITE = "demo"
DEMO_TESTER = "demo"
WAIT_FOR_RESULT_S = 300.0


@dataclass(frozen=True)
class DemoOptions:
    commits: int = 200
    bad_index: int = 137
    keep_running: bool = False
    consumers: int = 2


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


async def _seed(db_url: DbUrl, repo_path: Path, head: str, job_id: int) -> None:
    db = Database(db_url, maxsize=2)
    repo = Repository(db)
    try:
        await repo.create_missing_tables()
        await repo.upsert_regression(Regression(errid=DEMO_ERROR_ID, category="functional"))
        await repo.insert_jobs([Job(
            id=job_id, suite=DEMO_SUITE, category="functional", submit_time=int(time.time()),
            job_stage="finish", job_health="fail", job_data_readiness="complete",
            errids=(DEMO_ERROR_ID,),
            data={"upstream_url": str(repo_path), "upstream_repo": "demo-project",
                  "upstream_commit": head, "upstream_branch": "main",
                  "result_root": f"/result/demo/{job_id}", "suite": DEMO_SUITE})])
    finally:
        await db.close()


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


def run_demo(options: DemoOptions) -> int:
    from consumer.engine.synthetic import make_repo  # the demo's sample history

    work = Path(tempfile.mkdtemp(prefix="bisect-demo-"))
    env_url = Env().raw("BISECT_DB_URL")
    private: PrivateMariaDB | None = None
    services: list[ServiceProcess] = []
    try:
        if env_url is None:
            _say("BISECT_DB_URL is not set: starting a private MariaDB server")
            private = PrivateMariaDB(work / "db")
            private.start()
            db_url = DbUrl.parse(private.url)
        else:
            db_url = Env().db_url()
        _say(f"database: {db_url.redacted()}")
        sample = make_repo(work / "sample-repo", options.commits, options.bad_index,
                           error_id=DEMO_ERROR_ID, merges=options.commits // 20)
        _say(f"sample repository: {sample.path} ({options.commits} commits, regression at "
             f"{sample.culprit[:12]})")
        job_id = int(time.time() * 1000) % (10**12) + 10**12
        asyncio.run(_seed(db_url, sample.path, sample.head, job_id))
        _say(f"failed job {job_id} with error id {DEMO_ERROR_ID} written to the jobs table")

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        api_token, consumer_token = secrets.token_hex(16), secrets.token_hex(16)
        common_env = {"BISECT_DB_URL": db_url.to_url(), "BISECT_LOG_LEVEL": "info"}
        producer = ServiceProcess("producer", "producer.main", {
            **common_env, "BISECT_PORT": str(port), "BISECT_HOST": "127.0.0.1",
            "BISECT_API_TOKENS": api_token, "BISECT_CONSUMER_TOKENS": consumer_token,
            "BISECT_DISCOVERY_INTERVAL_S": "1", "BISECT_DISCOVERY_TESTER": DEMO_TESTER,
            "BISECT_DEFAULT_TESTER": DEMO_TESTER}, work / "logs" / "producer.log").start()
        services.append(producer)
        wait_http_ok(f"{base}/readyz", producer)
        testers = {DEMO_TESTER: {"kind": "command", "command": "sh check.sh", "timeout": 60}}
        for number in range(options.consumers):
            services.append(ServiceProcess(f"consumer-{number + 1}", "consumer.main", {
                **common_env, "BISECT_PRODUCER_URL": base,
                "BISECT_CONSUMER_TOKEN": consumer_token, "BISECT_CONSUMER_SLOTS": "1",
                "BISECT_CONSUMER_ID": f"demo-consumer-{number + 1}",
                "BISECT_TESTERS": json.dumps(testers), "BISECT_CONSUMER_HTTP_PORT": "0",
                "BISECT_CACHE_DIR": str(work / "cache"),
                "BISECT_WORK_DIR": str(work / f"work-{number + 1}"),
                "BISECT_POLL_MAX_S": "1", "BISECT_GRACE_S": "5"},
                work / "logs" / f"consumer-{number + 1}.log").start())
        _say(f"producer on {base} and {options.consumers} consumers started; "
             "waiting for discovery and the bisection")
        task = _wait_for_task(base, job_id, time.monotonic() + WAIT_FOR_RESULT_S)
        if task is None:
            _say(f"no result within {WAIT_FOR_RESULT_S:.0f} s; logs in {work / 'logs'}")
            return 1
        status, report = http_json(f"{base}/api/v1/tasks/{task['id']}/report")
        print()
        print(report if status == 200 else json.dumps(task, indent=2))
        print()
        found = task.get("bad_commit")
        ok = task["status"] == "completed" and found == sample.culprit
        _say(f"known culprit {sample.culprit}; found {found}: "
             f"{'MATCH' if ok else 'MISMATCH'}")
        _say(f"dashboard: {base}/dashboard/tasks/{task['id']}")
        if options.keep_running:
            _say("--keep-running: services stay up; press Ctrl-C to stop them")
            try:
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
            except KeyboardInterrupt:
                pass
        return 0 if ok else 1
    finally:
        for service in reversed(services):
            code = service.stop(timeout=30)
            _say(f"{service.name} stopped (exit {code})")
        if private is not None:
            private.close()
        if options.keep_running or env_url is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            _say(f"logs kept in {work / 'logs'}")


def main_demo(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="bisect-admin demo")
    parser.add_argument("--keep-running", action="store_true",
                        help="leave the services up for a look at the dashboard")
    parser.add_argument("--commits", type=int, default=200)
    args = parser.parse_args(argv)
    if args.commits < 10:
        parser.error("--commits must be at least 10")
    if args.keep_running:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    return run_demo(DemoOptions(commits=args.commits, bad_index=args.commits * 2 // 3,
                                keep_running=args.keep_running))


if __name__ == "__main__":
    sys.exit(main_demo(sys.argv[1:]))
