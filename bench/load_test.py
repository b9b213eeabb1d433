"""Load test of the queue and claim machinery (not part of CI).

10,000 queued tasks, 4 consumer processes with 4 slots each, and an engine that does no
bisection at all: ``BISECT_ENGINE_COMMAND`` is a tiny /bin/sh script that reads the spec and
prints a ``result`` line with status ``found``. What is measured is therefore the producer's
claim/heartbeat/finish path, the consumers' loops and the subprocess start per task — not
git or tests. Proves zero double claims: every task has ``claims`` == 1 in the database, one
``engine_started`` and one completed ``task_finished`` over all consumers, and no two engine
runs of one task overlap in time.

    python bench/load_test.py [--tasks 10000] [--consumers 4] [--slots 4]

Uses a fresh database on BISECT_TEST_DB_URL's server (default the local MariaDB), dropped
afterwards; appends its figures to artifacts/reliability.json (``load_test``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.db import Database
from common.repository import Repository
from tests.acceptance.support import Cluster, events_named
from tests.conftest import drop_mysql_database, make_mysql_database, url_string
from tests.faults.support import (
    engine_script,
    engines_overlapping,
    record_figures,
    task_rows,
)

INSTANT_ENGINE = """
spec=$(head -n 1)
echo '{"event": "result", "status": "found", "first_bad_commit": "%s", "confidence": 1.0}'
""" % ("f" * 40)


async def _create_tables(url: object) -> None:
    db = Database(url, maxsize=2)  # type: ignore[arg-type]
    await Repository(db).create_missing_tables()
    await db.close()


def run(tasks: int, consumers: int, slots: int) -> dict[str, object]:
    url = make_mysql_database()
    root = Path(tempfile.mkdtemp(prefix="bisect-load-"))
    cluster = Cluster(root, url_string(url), lease_s=30)
    try:
        asyncio.run(_create_tables(url))
        command = engine_script(root, "instant", INSTANT_ENGINE)
        cluster.start_producer()
        requests = [{"bad_job_id": f"load-{i}", "error_id": "E_LOAD",
                     "repo_url": f"{root}/repo", "bad_commit": "a" * 40, "tester": "synth"}
                    for i in range(tasks)]
        started = time.monotonic()
        ids = cluster.submit(requests)
        submit_s = time.monotonic() - started
        assert len(set(ids)) == tasks
        started = time.monotonic()
        for n in range(consumers):
            cluster.start_consumer(f"load{n}", slots=slots, BISECT_ENGINE_COMMAND=command,
                                   BISECT_POLL_MAX_S="0.2")
        last = -1
        while True:
            counts = cluster.counts()
            done = counts.get("completed", 0) + counts.get("failed", 0)
            if done != last:
                print(f"  {time.monotonic() - started:6.1f}s {counts}", flush=True)
                last = done
            if done >= tasks:
                break
            time.sleep(1.0)
        run_s = time.monotonic() - started

        rows = task_rows(cluster.db_url)
        statuses = collections.Counter(r["bisect_status"] for r in rows)
        claims = collections.Counter(int(r["claims"]) for r in rows)
        started_events: collections.Counter[int] = collections.Counter()
        finished: collections.Counter[int] = collections.Counter()
        per_consumer = {}
        for consumer in cluster.consumers.values():
            events = events_named(consumer.service, "engine_started", "task_finished")
            per_consumer[consumer.name] = sum(1 for e in events
                                              if e["event"] == "engine_started")
            for event in events:
                if event["event"] == "engine_started":
                    started_events[int(event["task_id"])] += 1
                elif event.get("outcome") == "completed":
                    finished[int(event["task_id"])] += 1
        overlapping = engines_overlapping(cluster)
        figures = {
            "tasks": tasks, "consumers": consumers, "slots_each": slots,
            "engine": "instant /bin/sh script (queue and claim machinery only)",
            "completed": statuses.get("completed", 0), "failed": statuses.get("failed", 0),
            "tasks_lost": tasks - len(rows),
            "claims_column": {str(k): v for k, v in sorted(claims.items())},
            "double_claims": sum(1 for r in rows if int(r["claims"]) != 1),
            "engine_runs_not_once": sum(1 for t in ids if started_events[t] != 1),
            "completed_reports_not_once": sum(1 for t in ids if finished[t] != 1),
            "overlapping_engine_runs": len(overlapping),
            "submit_s": round(submit_s, 1), "run_s": round(run_s, 1),
            "throughput_tasks_per_s": round(tasks / run_s, 1),
            "tasks_per_consumer": per_consumer,
        }
        codes = cluster.shutdown()
        figures["clean_exit_codes"] = sorted(set(codes.values()))
        return figures
    finally:
        cluster.kill_all()
        drop_mysql_database(url)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=4)
    args = parser.parse_args()
    figures = run(args.tasks, args.consumers, args.slots)
    record_figures("load_test", **figures)
    for key, value in figures.items():
        print(f"{key}: {value}")
    ok = (figures["completed"] == args.tasks and figures["double_claims"] == 0
          and figures["engine_runs_not_once"] == 0 and figures["overlapping_engine_runs"] == 0
          and figures["completed_reports_not_once"] == 0)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
