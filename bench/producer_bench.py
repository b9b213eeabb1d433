"""Producer benchmarks: HTTP submits (single and batch) and one job-discovery cycle.

Run ``python -m bench.producer_bench [--quick]``. It makes a private MariaDB database
(``BISECT_BENCH_DB_URL``, default ``mysql://root@127.0.0.1:3306/mysql`` names the server),
creates the tables, starts the real producer as a process for the HTTP measurements, drives
discovery in-process for the cycle measurements, prints a markdown table and drops the
database again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pymysql

from common.compass_job import job_row as compass_job_row
from common.db import Database
from common.logging import configure_logging
from common.models import Regression
from common.private_db import drop_database, recreate_database
from common.repository import Repository
from common.schema import JOBS
from common.settings import DbUrl
from producer.discovery import CURSOR_STATE, JobDiscovery
from producer.settings import ProducerSettings
from producer.writer import TaskStateWriter

SERVER_URL = os.environ.get("BISECT_BENCH_DB_URL", "mysql://root@127.0.0.1:3306/mysql")
API_TOKEN = "bench-api-token"
CONSUMER_TOKEN = "bench-consumer-token"
WRITE_HEADERS = {"Authorization": f"Bearer {API_TOKEN}"}
REPO_PREFIX = "https://git.example/"
WHITELISTED_ERRIDS = tuple(f"build-pkg.make.error-{n}" for n in range(50))
OTHER_ERRIDS = tuple(f"stderr.warning-{n}" for n in range(20))
SUITES = ("build-pkg", "pkgbuild", "ltp", "unixbench")
READY_TIMEOUT_S = 30.0
LOAD_CHUNK = 10_000  # rows per executemany; pymysql folds them into multi-row INSERTs
MAX_STMT_BYTES = 8 * 1024 * 1024  # below the server's 16 MiB max_allowed_packet
OLD_FAILURE_EVERY = 50  # 2% of the rows below the cursor failed (already handled)

# Targets from the brief.
TARGET_SUBMITS_PER_S = 1_000.0
TARGET_P99_MS = 50.0
TARGET_BATCH_TASKS_PER_S = 10_000.0
TARGET_CYCLE_S = 5.0
# "No slower" with room for run-to-run noise: 20%, and at least a quarter second.
SLOWDOWN_FACTOR = 1.2
SLOWDOWN_SLACK_S = 0.25
CYCLE_RUNS = 3


@dataclass(frozen=True)
class Sizes:
    submits: int
    warmup: int
    clients: int
    batches: int
    batch_size: int
    jobs: int  # rows per half of the jobs table (the table later doubles)
    new_failures: int
    new_window: int  # the newest rows, among which the new failures are spread

    @classmethod
    def full(cls) -> Sizes:
        return cls(submits=5_000, warmup=200, clients=16, batches=20, batch_size=1_000,
                   jobs=1_000_000, new_failures=10_000, new_window=100_000)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(submits=500, warmup=50, clients=16, batches=3, batch_size=1_000,
                   jobs=20_000, new_failures=1_000, new_window=5_000)


@dataclass(frozen=True)
class Row:
    benchmark: str
    measured: str
    target: str
    met: bool | None  # None: informational row without a target


# ---------------------------------------------------------------- database
def _admin_connection(url: DbUrl, database: str | None = None) -> pymysql.Connection[Any]:
    return pymysql.connect(host=url.host, port=url.port, user=url.user, password=url.password,
                           database=database, autocommit=True, charset="utf8mb4")


def make_database() -> DbUrl:
    base = DbUrl.parse(SERVER_URL, "BISECT_BENCH_DB_URL")
    return recreate_database(base.with_database(f"bisect_bench_{os.getpid()}"))


def truncate_tasks(url: DbUrl) -> None:
    conn = _admin_connection(url, url.database)
    try:
        with conn.cursor() as cur:
            cur.execute("TRUNCATE TABLE bisect")
    finally:
        conn.close()


def url_string(url: DbUrl) -> str:
    auth = url.user + (f":{url.password}" if url.password else "")
    return f"mysql://{auth}@{url.host}:{url.port}/{url.database}"


# ---------------------------------------------------------------- HTTP benchmarks
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def producer_process(url: DbUrl, log_path: Path) -> AsyncIterator[str]:
    """The real producer (``python -m producer.main``) as a child process; yields its URL."""
    port = free_port()
    env = {**os.environ, "BISECT_DB_URL": url_string(url), "BISECT_API_TOKENS": API_TOKEN,
           "BISECT_CONSUMER_TOKENS": CONSUMER_TOKEN, "BISECT_PORT": str(port),
           "BISECT_HOST": "127.0.0.1", "BISECT_DISCOVERY": "false",
           "BISECT_LOG_LEVEL": "warning", "BISECT_REPO_URL_ALLOW": REPO_PREFIX}
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "producer.main", env=env, stdout=log_file,
            stderr=asyncio.subprocess.STDOUT)
        try:
            await _wait_ready(base, proc, log_path)
            yield base
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _wait_ready(base: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                log_text = await asyncio.to_thread(log_path.read_text, errors="replace")
                raise RuntimeError(f"producer exited with {proc.returncode}:\n"
                                   f"{log_text[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"producer not ready after {READY_TIMEOUT_S:.0f} s")


def submit_body(n: int, *, numeric_job_id: bool = True) -> dict[str, Any]:
    """A distinct pair. Numeric job ids are compass-ci's: the producer looks each one up in
    the jobs table (none is there, so repo_url/bad_commit are used). Other ids skip that
    lookup, which isolates its cost."""
    job_id = str(50_000_000 + n) if numeric_job_id else f"ext-{n}"
    return {"bad_job_id": job_id, "error_id": WHITELISTED_ERRIDS[n % 50],
            "repo_url": f"{REPO_PREFIX}proj{n % 97}.git", "bad_commit": f"{n * 7919:040x}"}


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


async def bench_single_submits(base: str, sizes: Sizes, numbers: Iterator[int]) -> list[Row]:
    connector = aiohttp.TCPConnector(limit=sizes.clients)
    async with aiohttp.ClientSession(connector=connector, headers=WRITE_HEADERS) as session:

        async def client(count: int, latencies: list[float]) -> None:
            for _ in range(count):
                body = submit_body(next(numbers))
                started = time.perf_counter()
                async with session.post(f"{base}/api/v1/tasks", json=body) as response:
                    await response.read()
                    if response.status != 201:
                        raise RuntimeError(f"submit answered {response.status}")
                latencies.append(time.perf_counter() - started)

        async def run(total: int) -> tuple[float, list[float]]:
            latencies: list[float] = []
            share, rest = divmod(total, sizes.clients)
            started = time.perf_counter()
            await asyncio.gather(*(client(share + (i < rest), latencies)
                                   for i in range(sizes.clients)))
            return time.perf_counter() - started, latencies

        await run(sizes.warmup)
        elapsed, latencies = await run(sizes.submits)
    latencies.sort()
    rate = sizes.submits / elapsed
    p50, p99 = percentile(latencies, 0.50) * 1000, percentile(latencies, 0.99) * 1000
    label = f"Single submits, {sizes.clients} clients, {sizes.submits:,} requests"
    return [
        Row(f"{label}: throughput", f"{rate:,.0f} submits/s",
            f">= {TARGET_SUBMITS_PER_S:,.0f}/s", rate >= TARGET_SUBMITS_PER_S),
        Row(f"{label}: latency p50", f"{p50:.1f} ms", "", None),
        Row(f"{label}: latency p99", f"{p99:.1f} ms", f"< {TARGET_P99_MS:.0f} ms",
            p99 < TARGET_P99_MS),
    ]


async def bench_batch_submits(base: str, sizes: Sizes, numbers: Iterator[int], *,
                              numeric_job_id: bool = True) -> list[Row]:
    async with aiohttp.ClientSession(headers=WRITE_HEADERS) as session:

        async def one_batch() -> float:
            items = [submit_body(next(numbers), numeric_job_id=numeric_job_id)
                     for _ in range(sizes.batch_size)]
            started = time.perf_counter()
            async with session.post(f"{base}/api/v1/tasks/batch",
                                    json={"tasks": items}) as response:
                answer = await response.json()
                if response.status != 200 or answer["created"] != sizes.batch_size:
                    raise RuntimeError(f"batch answered {response.status}: "
                                       f"{str(answer)[:300]}")
            return time.perf_counter() - started

        await one_batch()  # warm-up, not counted
        started = time.perf_counter()
        per_batch = [await one_batch() for _ in range(sizes.batches)]
        elapsed = time.perf_counter() - started
    rate = sizes.batches * sizes.batch_size / elapsed
    per_batch.sort()
    label = f"Batch submits, {sizes.batches} x {sizes.batch_size:,} tasks, one client"
    if not numeric_job_id:
        # Diagnostic only: shows what the per-item jobs lookup costs.
        return [Row(f"{label}, non-numeric job ids (no jobs lookup; diagnostic)",
                    f"{rate:,.0f} tasks/s", "", None)]
    return [
        Row(f"{label}: throughput", f"{rate:,.0f} tasks/s",
            f">= {TARGET_BATCH_TASKS_PER_S:,.0f}/s", rate >= TARGET_BATCH_TASKS_PER_S),
        Row(f"{label}: time per batch p50", f"{percentile(per_batch, 0.5) * 1000:.0f} ms",
            "", None),
    ]


# ---------------------------------------------------------------- discovery benchmark
def job_row(job_id: int, now: int, top: int, errid: str) -> tuple[Any, ...]:
    """One jobs row in ``JOBS`` column order, shaped as compass-ci's scheduler writes a
    finished build job (compact layout: codes, errid, full_text_kv, the whole job in j)."""
    suite = SUITES[job_id % len(SUITES)]
    package = f"pkg{job_id % 5000}"
    commit = f"{(job_id * 2654435761) % (1 << 160):040x}"
    doc = {"suite": suite, "category": "functional", "my_account": "bench",
           "testbox": "vm-2p8g-1", "arch": "aarch64", "osv": "openeuler@24.03",
           "tbox_group": "vm-2p8g", "os": "openeuler", "os_version": "24.03",
           "os_arch": "aarch64",
           "program": {"makepkg": {"_url": f"https://gitee.com/src-openeuler/{package}.git",
                                   "commit": commit, "project": package}},
           "pp": {"makepkg": {"commit": commit, "project": package}},
           "result_root": f"/result/{suite}/2026-08-01/vm-2p8g/openeuler-24.03-aarch64/"
                          f"{commit[:12]}/{job_id}"}
    errids = tuple(errid.split())
    row = compass_job_row(job_id, doc, stage="finish",
                          health="abort" if errids else "success", readiness="complete",
                          errids=errids, submit_time=now - (top - job_id) // 10,
                          stats={e: 1 for e in errids})
    return tuple(row[column] for column in ("id", *JOBS.column_names()))


def load_jobs(url: DbUrl, ids: range, cursor: int, top: int, new_failure_every: int) -> None:
    """Bulk-insert ``ids``: above ``cursor`` every ``new_failure_every``-th row failed with a
    whitelisted error id; below it 2% failed (already handled by earlier cycles)."""
    columns = ("id", *JOBS.column_names())
    sql = (f"INSERT INTO jobs ({', '.join(columns)}) "
           f"VALUES ({', '.join(['%s'] * len(columns))})")
    now = int(time.time())
    conn = _admin_connection(url, url.database)
    try:
        with conn.cursor() as cur:
            cur.max_stmt_length = MAX_STMT_BYTES
            for start in range(ids.start, ids.stop, LOAD_CHUNK):
                rows = []
                for job_id in range(start, min(start + LOAD_CHUNK, ids.stop)):
                    errid = ""
                    if job_id > cursor and (job_id - cursor) % new_failure_every == 0:
                        errid = f"{WHITELISTED_ERRIDS[job_id % 50]} {OTHER_ERRIDS[job_id % 20]}"
                    elif job_id <= cursor and job_id % OLD_FAILURE_EVERY == 0:
                        errid = f"{OTHER_ERRIDS[job_id % 20]} {WHITELISTED_ERRIDS[job_id % 50]}"
                    rows.append(job_row(job_id, now, top, errid))
                cur.executemany(sql, rows)
    finally:
        conn.close()


async def time_cycle(url: DbUrl, repo: Repository, settings: ProducerSettings, cursor: int,
                     expected: int) -> float:
    """Reset the tasks and the cursor, then time one cycle of a fresh discovery."""
    await asyncio.to_thread(truncate_tasks, url)
    await repo.put_state(CURSOR_STATE, str(cursor))
    writer = TaskStateWriter(repo, lease_s=30, max_attempts=3)
    discovery = JobDiscovery(repo, writer, settings)
    started = time.perf_counter()
    report = await discovery.run_cycle()
    elapsed = time.perf_counter() - started
    if report.created != expected or report.jobs_read != expected:
        raise RuntimeError(f"cycle read {report.jobs_read} jobs and created {report.created} "
                           f"tasks; expected {expected} of each")
    return elapsed


async def time_cycles(url: DbUrl, repo: Repository, settings: ProducerSettings, cursor: int,
                      expected: int, runs: int) -> tuple[float, float]:
    """The first cycle after loading (caches as the load left them) and the best of ``runs``."""
    times = [await time_cycle(url, repo, settings, cursor, expected) for _ in range(runs)]
    return times[0], min(times)


async def bench_discovery(url: DbUrl, repo: Repository, sizes: Sizes) -> list[Row]:
    for number, errid in enumerate(WHITELISTED_ERRIDS, start=1):
        await repo.insert_regression(Regression(id=number, errid=errid, category="build",
                                                valid="true"))
    settings = ProducerSettings(db_url=url, discovery_enabled=True,
                                instance_id="bench-discovery",
                                repo_url_allow=("https://gitee.com/src-openeuler/",))
    # The first half sits at ids above ``sizes.jobs`` so the second, older half fits below.
    top = 2 * sizes.jobs
    cursor = top - sizes.new_window
    every = sizes.new_window // sizes.new_failures
    started = time.perf_counter()
    await asyncio.to_thread(load_jobs, url, range(sizes.jobs + 1, top + 1), cursor, top, every)
    load_s = time.perf_counter() - started
    first_s, best_s = await time_cycles(url, repo, settings, cursor, sizes.new_failures,
                                        CYCLE_RUNS)
    await asyncio.to_thread(load_jobs, url, range(1, sizes.jobs + 1), cursor, top, every)
    first2_s, best2_s = await time_cycles(url, repo, settings, cursor, sizes.new_failures,
                                          CYCLE_RUNS)
    label = f"Discovery cycle, {sizes.new_failures:,} new failures"
    no_slower = best2_s <= max(best_s * SLOWDOWN_FACTOR, best_s + SLOWDOWN_SLACK_S)
    return [
        Row(f"Load {sizes.jobs:,} jobs rows (setup, multi-row INSERT)",
            f"{load_s:.1f} s ({sizes.jobs / load_s:,.0f} rows/s)", "", None),
        Row(f"{label}, {sizes.jobs:,}-row jobs table",
            f"{first_s:.2f} s first, {best_s:.2f} s best of {CYCLE_RUNS}",
            f"<= {TARGET_CYCLE_S:.0f} s", max(first_s, best_s) <= TARGET_CYCLE_S),
        Row(f"{label}, {2 * sizes.jobs:,}-row jobs table",
            f"{first2_s:.2f} s first, {best2_s:.2f} s best of {CYCLE_RUNS}",
            f"<= {TARGET_CYCLE_S:.0f} s, no slower (best vs best)",
            first2_s <= TARGET_CYCLE_S and no_slower),
    ]


# ---------------------------------------------------------------- driver
def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| Benchmark | Measured | Target | Met |", "|---|---|---|---|"]
    for row in rows:
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(f"| {row.benchmark} | {row.measured} | {row.target} | {met} |")
    return "\n".join(lines)


async def run_all(url: DbUrl, sizes: Sizes, log_dir: Path) -> list[Row]:
    db = Database(url, maxsize=10)
    repo = Repository(db)
    try:
        await repo.create_missing_tables()
        numbers = itertools.count()
        rows: list[Row] = []
        async with producer_process(url, log_dir / "producer.log") as base:
            rows += await bench_single_submits(base, sizes, numbers)
            rows += await bench_batch_submits(base, sizes, numbers)
            rows += await bench_batch_submits(base, sizes, numbers, numeric_job_id=False)
        rows += await bench_discovery(url, repo, sizes)
        return rows
    finally:
        await db.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.producer_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    configure_logging("bench", "warning")
    url = make_database()
    try:
        with tempfile.TemporaryDirectory(prefix="producer-bench-") as log_dir:
            rows = asyncio.run(run_all(url, sizes, Path(log_dir)))
    finally:
        drop_database(url)
    print(markdown_table(rows))
    return 0 if all(row.met is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
