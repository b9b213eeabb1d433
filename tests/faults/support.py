"""The fault suite's own helpers, on top of the acceptance toolkit (``tests/acceptance/
support.py``: :class:`Cluster`, process scans, log intervals).

What is here: the figures file (``artifacts/reliability.json``, rewritten into
RELIABILITY.md by ``scripts/reliability.sh``), misbehaving engine scripts for
``BISECT_ENGINE_COMMAND``, direct reads of the task and step rows, and the checks every fault
test ends with (nothing lost, nothing run twice at once, no zombie, no leftover process or
worktree).
"""

from __future__ import annotations

import collections
import fcntl
import itertools
import json
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pymysql

from common.settings import DbUrl
from tests.acceptance.support import (
    Cluster,
    engine_intervals,
    process_table,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
FIGURES_ENV = "BISECT_RELIABILITY_JSON"
FINAL = ("completed", "failed", "cancelled")


# ---------------------------------------------------------------- figures
def figures_path() -> Path:
    return Path(os.environ.get(FIGURES_ENV) or ROOT / "artifacts" / "reliability.json")


def record_figures(fault: str, **figures: Any) -> None:
    """Merge ``figures`` under ``fault`` in the figures file (one JSON object, by fault;
    a rerun of a test replaces its entry). Safe against concurrent writers (flock)."""
    path = figures_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            data = {}
        data[fault] = {**figures, "measured_at": int(time.time())}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)


# ---------------------------------------------------------------- engine scripts
def engine_script(root: Path, name: str, body: str) -> str:
    """Write ``body`` as a /bin/sh script; the ``BISECT_ENGINE_COMMAND`` that runs it."""
    path = root / "engines" / f"{name}.sh"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return f"/bin/sh {path}"


# ---------------------------------------------------------------- the rows
@contextmanager
def connect(db_url: str) -> Iterator[pymysql.connections.Connection]:
    url = DbUrl.parse(db_url, "db_url")
    conn = pymysql.connect(host=url.host, port=url.port, user=url.user, password=url.password,
                           database=url.database or None, autocommit=True, charset="utf8mb4",
                           cursorclass=pymysql.cursors.DictCursor, connect_timeout=5)
    try:
        yield conn
    finally:
        conn.close()


def query(db_url: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return list(cur.fetchall())


def task_rows(db_url: str) -> list[dict[str, Any]]:
    return query(db_url, "SELECT id, bad_job_id, error_id, bisect_status, owner, claims, "
                         "attempts, last_error, bad_commit FROM bisect")


def pair_counts(db_url: str) -> collections.Counter[tuple[str, str]]:
    """How many task rows each (bad_job_id, error_id) pair has."""
    return collections.Counter((r["bad_job_id"], r["error_id"]) for r in task_rows(db_url))


def step_rows(db_url: str) -> list[dict[str, Any]]:
    return query(db_url, "SELECT task_id, attempt, seq, started_ms, duration_ms "
                         "FROM bisect_step")


# ---------------------------------------------------------------- the checks
def _overlaps(intervals: Iterable[tuple[float, float]]) -> bool:
    ordered = sorted(intervals)
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(ordered))


def attempts_overlapping_in_steps(db_url: str) -> list[int]:
    """Tasks where two attempts wrote steps during overlapping spans of time (each
    attempt's span: its first step's start to its last step's end)."""
    spans: dict[int, dict[int, list[float]]] = collections.defaultdict(dict)
    for row in step_rows(db_url):
        start = row["started_ms"] / 1000
        end = start + row["duration_ms"] / 1000
        span = spans[int(row["task_id"])].setdefault(int(row["attempt"]), [start, end])
        span[0], span[1] = min(span[0], start), max(span[1], end)
    return sorted(task for task, by_attempt in spans.items()
                  if _overlaps((s, e) for s, e in by_attempt.values()))


def engines_overlapping(cluster: Cluster, gone_at: dict[str, float] | None = None) -> list[int]:
    """Tasks whose engine subprocesses (over every consumer, from ``engine_started`` /
    ``engine_exited``) ran at the same time. A consumer killed with -9 never logs its engines'
    end: ``gone_at[name]`` is when the test saw them gone (wall clock)."""
    per_task: dict[int, list[tuple[float, float]]] = collections.defaultdict(list)
    for consumer in cluster.consumers.values():
        for interval in engine_intervals(consumer.service):
            end = interval.end
            if end == float("inf") and gone_at and consumer.name in gone_at:
                end = gone_at[consumer.name]
            per_task[interval.key[0]].append((interval.start, end))
    return sorted(task for task, runs in per_task.items() if _overlaps(runs))


def assert_accounted(cluster: Cluster, expected_ids: Iterable[int],
                     gone_at: dict[str, float] | None = None,
                     exempt: Iterable[int] = ()) -> dict[str, int]:
    """Every expected task exists once and is completed, failed with a reason, or waiting;
    none ran twice at once. Returns the count by status."""
    rows = {int(r["id"]): r for r in task_rows(cluster.db_url)}
    expected = set(expected_ids)
    lost = sorted(expected - set(rows))
    assert not lost, f"tasks lost: {lost[:20]}"
    counts: collections.Counter[str] = collections.Counter()
    for task_id in expected:
        row = rows[task_id]
        status = row["bisect_status"]
        counts[status] += 1
        assert status in ("completed", "failed", "wait"), row
        if status == "failed":
            assert row["last_error"], row
    # ``exempt``: tasks a known bug makes run twice; the caller reports them.
    overlapping = sorted(set(attempts_overlapping_in_steps(cluster.db_url)) - set(exempt))
    assert not overlapping, f"two attempts of one task wrote steps at once: {overlapping}"
    overlapping = sorted(set(engines_overlapping(cluster, gone_at)) - set(exempt))
    assert not overlapping, f"engines of one task ran at once: {overlapping}"
    return dict(counts)


def defunct_children(cluster: Cluster) -> list[Any]:
    """Zombies whose parent is a live process of the cluster (nobody reaps them)."""
    return cluster.zombies()


def empty_dirs_left(cluster: Cluster, name: str) -> list[str]:
    """Entries of a consumer's BISECT_WORK_DIR that are empty directories."""
    work = cluster.consumers[name].work_dir
    if not work.exists():
        return []
    return sorted(p.name for p in work.iterdir() if p.is_dir() and not any(p.iterdir()))


def assert_clean_end(cluster: Cluster, tolerate_empty_dirs: tuple[str, ...] = ()) -> None:
    """No zombie now; a clean SIGTERM stop of everything (exit 0); then no process of the
    cluster, no worktree in any mirror, and every consumer's BISECT_WORK_DIR empty (empty
    directories tolerated for the consumers named, a known bug the caller reports)."""
    wait_until(lambda: not cluster.zombies(), 5, f"zombies to be reaped: {cluster.zombies()}")
    codes = cluster.shutdown()
    assert all(code == 0 for code in codes.values()), (codes, cluster.logs_tail())
    cluster.assert_clean_after_shutdown()
    for consumer in cluster.consumers.values():
        left = sorted(os.listdir(consumer.work_dir)) if consumer.work_dir.exists() else []
        if consumer.name in tolerate_empty_dirs:
            left = sorted(set(left) - set(empty_dirs_left(cluster, consumer.name)))
        assert not left, f"{consumer.name}: BISECT_WORK_DIR not empty: {left}"


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def descendants_alive(pid_set: Iterable[int]) -> list[int]:
    """Which of these pids still exist and are not zombies."""
    table = process_table()
    return sorted(p for p in pid_set if p in table and table[p].state != "Z")
