"""The consumer as a service: how fast a submitted task starts, and what a bisection costs
on top of its tests.

    python -m bench.consumer_bench [--samples 40] [--idle-samples 10] [--tasks 4]

Starts a real producer and real consumers (processes, ``tests/acceptance/support.py``) on a
fresh database of the test server (``BISECT_TEST_DB_URL``, default
``mysql://root@127.0.0.1:3306/``), dropped afterwards. Consumers run with their default poll
settings (``BISECT_POLL_MIN_S`` 0.2, ``BISECT_POLL_MAX_S`` 5) unless ``--poll-max`` is given.

1. *Submit to start*: tasks are submitted one at a time (``POST /api/v1/tasks``); the latency
   is from just before the request to the consumer's ``engine_started`` log event (the engine
   subprocess exists), and to ``bisection_started`` (the engine's ``started`` event, after
   its Python start-up). *Steady*: a task every 0.2-1.2 s; *idle*: a task after 5-8 s of
   nothing, when an idle consumer's poll interval has backed off.
2. *Overhead*: a 16-commit repository whose test sleeps 1 s, one consumer with one slot, one
   task at a time. Claim to finish (consumer log) against the sum of the test runs (journal)
   and against the same spec run directly with ``python -m consumer.engine --spec -``.

Prints markdown tables (the run's details go to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.db import Database
from common.repository import Repository
from common.settings import DbUrl
from consumer.engine.synthetic import make_repo
from tests.acceptance.support import (
    Cluster,
    events_named,
    journal_intervals,
    parse_time,
    task_request,
    tester_profiles,
    wait_until,
)
from tests.conftest import drop_mysql_database, make_mysql_database, url_string

LEASE_S = 30  # the producer's default: nothing is killed here


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def _create_tables(url: DbUrl) -> None:
    db = Database(url, maxsize=2)
    try:
        await Repository(db).create_missing_tables()
    finally:
        await db.close()


def _producer_env() -> dict[str, str]:
    # The producer's defaults, except what the cluster needs to run at all.
    return {"BISECT_SWEEP_INTERVAL_S": "5", "BISECT_WRITER_HEARTBEAT_S": "2"}


def _consumer_env(poll_max: float | None) -> dict[str, str]:
    env = {"BISECT_POLL_MIN_S": "0.2", "BISECT_POLL_MAX_S": "5", "BISECT_GRACE_S": "30"}
    if poll_max is not None:
        env["BISECT_POLL_MAX_S"] = str(poll_max)
        env["BISECT_POLL_MIN_S"] = str(min(0.2, poll_max))
    return env


# ---------------------------------------------------------------- 1. submit to start
@dataclass(frozen=True)
class Latency:
    spawn: list[float]  # submit -> engine subprocess started
    engine: list[float]  # submit -> the engine's "started" event


def _starts(cluster: Cluster) -> tuple[dict[int, float], dict[int, float]]:
    spawned: dict[int, float] = {}
    started: dict[int, float] = {}
    for consumer in cluster.consumers.values():
        for event in events_named(consumer.service, "engine_started"):
            spawned.setdefault(int(event["task_id"]), parse_time(event["timestamp"]))
        for event in events_named(consumer.service, "bisection_started"):
            started.setdefault(int(event["task_id"]), parse_time(event["timestamp"]))
    return spawned, started


def measure_latency(root: Path, db_url: str, consumers: int, samples: int,
                    gap: tuple[float, float], poll_max: float | None, seed: int) -> Latency:
    rng = random.Random(seed)
    cluster = Cluster(root, db_url, lease_s=LEASE_S)
    try:
        synthetic = make_repo(root / "repo", 12, 7)
        cluster.start_producer(**_producer_env())
        for k in range(consumers):
            cluster.start_consumer(f"lat{k}", slots=2, **_consumer_env(poll_max))
        time.sleep(gap[0])
        submitted: dict[int, float] = {}
        for i in range(samples):
            time.sleep(rng.uniform(*gap))
            body = task_request(synthetic, f"lat-{seed}-{i}", tester="synth")
            at = time.time()
            status, answer = cluster.api("POST", "/api/v1/tasks", body)
            assert status == 201, answer
            submitted[int(answer["task"]["id"])] = at
        wait_until(lambda: len(_starts(cluster)[1]) >= samples, 60, "every task to start")
        wait_until(lambda: cluster.counts().get("completed", 0) == samples, 60,
                   "every task to complete")
        spawned, started = _starts(cluster)
        return Latency([spawned[t] - at for t, at in submitted.items()],
                       [started[t] - at for t, at in submitted.items()])
    finally:
        cluster.shutdown()
        cluster.kill_all()


# ---------------------------------------------------------------- 2. overhead
@dataclass(frozen=True)
class Overhead:
    claim_to_finish: float
    tests: float  # the test runs' wall time, from the journal
    runs: int
    engine: float  # engine_started -> engine_exited in the consumer
    direct: float  # the same spec, engine run by hand
    direct_runs: int


def _direct_run(spec: dict[str, Any], journal: Path) -> tuple[float, int]:
    before = len(journal_intervals(journal))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "consumer.engine", "--spec", "-"],
                          input=json.dumps(spec).encode(), capture_output=True, check=False)
    elapsed = time.monotonic() - started
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert result["status"] == "found", result
    return elapsed, len(journal_intervals(journal)) - before


def measure_overhead(root: Path, db_url: str, tasks: int) -> list[Overhead]:
    cluster = Cluster(root, db_url, lease_s=LEASE_S, slow_s=1.0)
    out = []
    try:
        cluster.start_producer(**_producer_env())
        consumer = cluster.start_consumer("solo", slots=1, **_consumer_env(None))
        direct_journal = root / "direct-journal"
        for k in range(tasks):
            # A fresh repository each time: no verdict of an earlier task is reused, and
            # both runs clone their mirror cold.
            synthetic = make_repo(root / f"repo-{k}", 16, 5 + 3 * k)
            before = len(journal_intervals(consumer.journal))
            (task_id,) = cluster.submit([task_request(synthetic, f"ovh-{k}", tester="slow")])
            wait_until(lambda task_id=task_id: cluster.task(task_id)["status"] == "completed",
                       120, f"task {k} to complete", interval=0.2)
            wait_until(lambda task_id=task_id: any(
                int(e["task_id"]) == task_id
                for e in events_named(consumer.service, "task_finished")), 10, "its log")
            events = {e["event"]: parse_time(e["timestamp"])
                      for e in events_named(consumer.service, "task_claimed", "task_finished",
                                            "engine_started", "engine_exited")
                      if int(e["task_id"]) == task_id}
            runs = journal_intervals(consumer.journal)[before:]
            assert cluster.task(task_id)["bad_commit"] == synthetic.culprit
            profile = tester_profiles(direct_journal, slow_s=1.0)["slow"]
            spec = {"repo_url": str(synthetic.path), "bad_commit": synthetic.head,
                    "good_commit": synthetic.root, "error_id": synthetic.error_id,
                    "tester": {**profile, "name": "slow"}, "limits": {}, "known_verdicts": [],
                    "cache_dir": str(root / f"direct-cache-{k}"),
                    "work_dir": str(root / f"direct-work-{k}")}
            direct, direct_runs = _direct_run(spec, direct_journal)
            row = Overhead(events["task_finished"] - events["task_claimed"],
                           sum(r.end - r.start for r in runs), len(runs),
                           events["engine_exited"] - events["engine_started"],
                           direct, direct_runs)
            note(f"overhead task {k}: {row}")
            out.append(row)
    finally:
        cluster.shutdown()
        cluster.kill_all()
    return out


# ---------------------------------------------------------------- report
def latency_rows(results: dict[tuple[int, str], Latency]) -> list[str]:
    rows = ["| consumers (2 slots each) | arrivals | samples | submit→spawn p50 | "
            "p99 | max | submit→engine `started` p50 | p99 | target p50 < 1 s, p99 < 3 s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for (consumers, pattern), lat in results.items():
        p50, p99 = percentile(lat.spawn, 50), percentile(lat.spawn, 99)
        met = "yes" if p50 < 1 and p99 < 3 else "**no**"
        rows.append(f"| {consumers} | {pattern} | {len(lat.spawn)} | {p50:.2f} s | "
                    f"{p99:.2f} s | {max(lat.spawn):.2f} s | "
                    f"{percentile(lat.engine, 50):.2f} s | {percentile(lat.engine, 99):.2f} s "
                    f"| {met} |")
    return rows


def overhead_rows(results: list[Overhead]) -> list[str]:
    rows = ["| task | test runs | tests (sum) | engine by hand | engine in consumer | "
            "claim→finish | overhead vs tests | overhead vs engine by hand |",
            "|---|---|---|---|---|---|---|---|"]
    for k, r in enumerate(results):
        rows.append(
            f"| {k} | {r.runs} | {r.tests:.2f} s | {r.direct:.2f} s ({r.direct_runs} runs) | "
            f"{r.engine:.2f} s | {r.claim_to_finish:.2f} s | "
            f"{(r.claim_to_finish - r.tests) / r.claim_to_finish:.1%} | "
            f"{(r.claim_to_finish - r.direct) / r.claim_to_finish:.1%} |")
    total = sum(r.claim_to_finish for r in results)
    vs_tests = (total - sum(r.tests for r in results)) / total
    vs_direct = (total - sum(r.direct for r in results)) / total
    rows.append(f"| all | {sum(r.runs for r in results)} | {sum(r.tests for r in results):.2f}"
                f" s | {sum(r.direct for r in results):.2f} s | "
                f"{sum(r.engine for r in results):.2f} s | {total:.2f} s | "
                f"**{vs_tests:.1%}** | **{vs_direct:.1%}** (target < 5%) |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40, help="steady arrivals per setup")
    parser.add_argument("--idle-samples", type=int, default=10,
                        help="arrivals after 5-8 s of nothing, per setup (0: skip)")
    parser.add_argument("--tasks", type=int, default=4, help="bisections for the overhead")
    parser.add_argument("--poll-max", type=float, default=None,
                        help="BISECT_POLL_MAX_S of the consumers (default: theirs, 5 s)")
    args = parser.parse_args()
    began = time.monotonic()
    url = make_mysql_database()
    try:
        db_url = url_string(url)
        latencies: dict[tuple[int, str], Latency] = {}
        with tempfile.TemporaryDirectory(prefix="consumer-bench-") as tmp:
            for seed, (consumers, pattern, samples, gap) in enumerate([
                    (1, "steady", args.samples, (0.2, 1.2)),
                    (4, "steady", args.samples, (0.2, 1.2)),
                    (1, "idle", args.idle_samples, (5.0, 8.0)),
                    (4, "idle", args.idle_samples, (5.0, 8.0))]):
                if samples <= 0:
                    continue
                note(f"latency: {consumers} consumer(s), {pattern}, {samples} tasks")
                fresh_database(url)
                latencies[(consumers, pattern)] = measure_latency(
                    Path(tmp) / f"lat-{seed}", db_url, consumers, samples, gap,
                    args.poll_max, seed)
            overhead: list[Overhead] = []
            if args.tasks > 0:
                fresh_database(url)
                note(f"overhead: {args.tasks} bisections with a 1 s test")
                overhead = measure_overhead(Path(tmp) / "overhead", db_url, args.tasks)
    finally:
        drop_mysql_database(url)
    poll = f"{args.poll_max:g} s" if args.poll_max is not None else "5 s (default)"
    print(f"Submit to start (consumer BISECT_POLL_MAX_S {poll}):\n")
    print("\n".join(latency_rows(latencies)))
    if overhead:
        print("\nConsumer overhead, bisections whose test takes 1 s (16 commits, 1 consumer, "
              "1 slot):\n")
        print("\n".join(overhead_rows(overhead)))
    print(f"\n(measured in {time.monotonic() - began:.0f} s)")
    return 0


def fresh_database(url: DbUrl) -> None:
    """Empty ``url``'s database and create the tables: each setup starts from nothing."""
    from common.private_db import recreate_database

    recreate_database(url)
    asyncio.run(_create_tables(url))


if __name__ == "__main__":
    sys.exit(main())
