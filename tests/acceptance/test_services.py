"""The producer and consumers as real processes on the real database: many tasks over many
consumers, a consumer killed or stopped, the producer killed and restarted, a bisection that
hangs and one that is cancelled. What counts is what the database holds afterwards, what the
services logged, and that no process or worktree is left behind."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.models import Step
from common.repository import Repository
from common.settings import DbUrl
from tests.acceptance import support
from tests.acceptance.support import (
    Cluster,
    engine_intervals,
    events_named,
    journal_intervals,
    make_repos,
    max_concurrency,
    parse_time,
    task_request,
    wait_until,
)
from tests.conftest import url_string

pytestmark = pytest.mark.acceptance

FINAL = ("completed", "failed", "cancelled")


@pytest.fixture
def cluster(repo: Repository, db_url: DbUrl, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster on the test's database (``repo`` made the tables); always torn down."""
    cluster = Cluster(tmp_path, url_string(db_url))
    try:
        yield cluster
    finally:
        cluster.kill_all()


def _wait_all_final(cluster: Cluster, count: int, timeout: float) -> dict[int, dict[str, Any]]:
    def done() -> dict[int, dict[str, Any]] | None:
        tasks = cluster.tasks()
        finished = [t for t in tasks.values() if t["status"] in FINAL]
        return tasks if len(tasks) == count and len(finished) == count else None

    try:
        return wait_until(done, timeout, f"{count} tasks to finish", interval=0.5)
    except AssertionError:
        print(cluster.counts())
        print(cluster.logs_tail())
        raise


def _steps_by_attempt(steps: list[Step]) -> dict[int, list[Step]]:
    out: dict[int, list[Step]] = collections.defaultdict(list)
    for step in steps:
        out[step.attempt].append(step)
    return out


def _finished_events(cluster: Cluster, outcome: str) -> collections.Counter[int]:
    """How many times each task was reported ``outcome`` (consumers' ``task_finished``)."""
    counter: collections.Counter[int] = collections.Counter()
    for consumer in cluster.consumers.values():
        for event in events_named(consumer.service, "task_finished"):
            if event.get("outcome") == outcome:
                counter[int(event["task_id"])] += 1
    return counter


def _assert_each_reported_once(cluster: Cluster, outcome: str, ids: list[int]) -> None:
    """Every task in ``ids`` was reported ``outcome`` exactly once by a consumer.

    The producer records a finish before the consumer reads the answer and logs
    ``task_finished``, so the database can show a task final a moment before its
    consumer's log line exists: wait for the lines, then compare exactly."""
    expected = collections.Counter(ids)
    try:
        wait_until(lambda: _finished_events(cluster, outcome) == expected, 10,
                   f"consumers to log task_finished ({outcome}) for every task")
    except AssertionError:
        pass  # the exact comparison below shows the difference
    assert _finished_events(cluster, outcome) == expected


def _assert_slots_respected(cluster: Cluster) -> dict[str, tuple[int, int]]:
    """Per consumer: (engines at once, test commands at once), both at most its slots."""
    seen = {}
    for consumer in cluster.consumers.values():
        engines = engine_intervals(consumer.service)
        runs = journal_intervals(consumer.journal)
        at_once = (max_concurrency(engines), max_concurrency(runs))
        seen[consumer.name] = at_once
        assert max(at_once) <= consumer.slots, (consumer.name, at_once, consumer.slots)
    return seen


def _assert_no_zombies(cluster: Cluster) -> None:
    # A zombie can exist for a moment between a child's exit and its reaping.
    wait_until(lambda: not cluster.zombies(), 5, f"zombies to be reaped: {cluster.zombies()}")


def _shutdown_clean(cluster: Cluster) -> None:
    _assert_no_zombies(cluster)
    codes = cluster.shutdown()
    assert all(code == 0 for code in codes.values()), (codes, cluster.logs_tail())
    cluster.assert_clean_after_shutdown()


# ---------------------------------------------------------------- 1. many tasks
@pytest.mark.timeout(200)
async def test_200_tasks_on_three_consumers_each_completed_once(
        cluster: Cluster, repo: Repository, tmp_path: Path) -> None:
    repos = make_repos(tmp_path / "repos", 4, n_commits=24)
    cluster.start_producer()
    for name in ("c1", "c2", "c3"):
        cluster.start_consumer(name, slots=2)
    requests = [task_request(repos[i % 4], f"many-{i}", with_good=i % 2 == 0)
                for i in range(200)]
    started = time.monotonic()
    ids = cluster.submit(requests)
    assert len(set(ids)) == 200
    tasks = _wait_all_final(cluster, 200, timeout=150)
    elapsed = time.monotonic() - started

    culprit_of = {task_id: repos[i % 4].culprit for i, task_id in enumerate(ids)}
    wrong = {t: (tasks[t]["status"], tasks[t]["bad_commit"], tasks[t]["last_error"])
             for t in ids
             if tasks[t]["status"] != "completed" or tasks[t]["bad_commit"] != culprit_of[t]}
    assert not wrong, wrong
    assert {(t["claims"], t["attempts"]) for t in tasks.values()} == {(1, 0)}

    # Each task's steps come from exactly one attempt, the one claim it had.
    test_runs = 0
    for task_id in ids:
        by_attempt = _steps_by_attempt(await repo.steps_of_task(task_id))
        assert list(by_attempt) == [1], (task_id, sorted(by_attempt))
        seqs = [s.seq for s in by_attempt[1]]
        assert len(seqs) == len(set(seqs)), (task_id, seqs)
        assert culprit_of[task_id] in {s.commit for s in by_attempt[1] if s.verdict == "bad"}
        test_runs += sum(s.runs for s in by_attempt[1] if not s.reused)

    # Completed exactly once: one claim, one completed finish per task, over all consumers.
    claims: collections.Counter[int] = collections.Counter(
        int(e["task_id"]) for c in cluster.consumers.values()
        for e in events_named(c.service, "task_claimed"))
    assert claims == collections.Counter(ids)
    _assert_each_reported_once(cluster, "completed", ids)
    recorded = collections.Counter(
        int(e["task_id"]) for e in events_named(cluster.producer, "task_finished"))
    assert recorded == collections.Counter(ids)

    # Never more subprocesses than slots; every test run journaled matches a step.
    at_once = _assert_slots_respected(cluster)
    journaled = sum(len(journal_intervals(c.journal)) for c in cluster.consumers.values())
    assert journaled == test_runs
    per_consumer = {c.name: len(engine_intervals(c.service)) for c in cluster.consumers.values()}
    assert sum(per_consumer.values()) == 200 and min(per_consumer.values()) > 0, per_consumer
    print(f"\n200 tasks in {elapsed:.1f}s; tasks per consumer {per_consumer}; "
          f"(engines, tests) at once {at_once}; test runs {test_runs}")
    _shutdown_clean(cluster)


def _owned_with_steps(cluster: Cluster, owner: str, want: int) -> list[int] | None:
    """Tasks ``owner`` holds that have run at least one test (mid-bisection), if ``want``."""
    held = [t for t in cluster.tasks().values()
            if t["status"] == "processing" and t["owner"] == owner and t["current_step"] >= 1]
    return [int(t["id"]) for t in held] if len(held) >= want else None


# ---------------------------------------------------------------- 2. a consumer dies
@pytest.mark.timeout(90)
async def test_sigkilled_consumer_tasks_come_back_after_the_lease(
        cluster: Cluster, repo: Repository, tmp_path: Path) -> None:
    (synthetic,) = make_repos(tmp_path / "repos", 1, n_commits=16)
    cluster.start_producer()
    victim = cluster.start_consumer("victim", slots=2)
    survivor = cluster.start_consumer("survivor", slots=2)
    ids = cluster.submit([task_request(synthetic, f"crash-{i}", tester="slow")
                          for i in range(8)])
    wait_until(lambda: _owned_with_steps(cluster, "victim", 2), 30,
               "the victim to be mid-bisection on two tasks")
    killed_at = time.time()
    cluster.crash(victim.service)
    await asyncio.sleep(0.3)  # a finish the victim sent just before may still be in the producer
    held = _owned_with_steps(cluster, "victim", 1)
    assert held, "the victim held nothing mid-bisection when it died"

    tasks = _wait_all_final(cluster, 8, timeout=60)
    assert {t["status"] for t in tasks.values()} == {"completed"}, tasks
    assert {t["bad_commit"] for t in tasks.values()} == {synthetic.culprit}
    for task_id in held:
        task = tasks[task_id]
        # The lease ran out once (an attempt counted), then the survivor ran it afresh.
        assert (task["claims"], task["attempts"]) == (2, 1), task
        by_attempt = _steps_by_attempt(await repo.steps_of_task(task_id))
        assert sorted(by_attempt) == [1, 2], (task_id, sorted(by_attempt))
    sweeps = [e for e in events_named(cluster.producer, "lease_expired")]
    assert sorted(int(e["task_id"]) for e in sweeps) == sorted(held)
    assert all(parse_time(e["timestamp"]) >= killed_at + cluster.lease_s - 1 for e in sweeps)
    # The survivor completed what the victim held; every task was completed exactly once.
    _assert_each_reported_once(cluster, "completed", ids)  # waits for the log lines
    survivor_done = {int(e["task_id"]) for e in events_named(survivor.service, "task_finished")
                     if e.get("outcome") == "completed"}
    assert set(held) <= survivor_done
    assert not events_named(survivor.service, "lease_lost")
    _assert_slots_respected(cluster)
    _shutdown_clean(cluster)


# ---------------------------------------------------------------- 3. a consumer stops
@pytest.mark.timeout(90)
async def test_sigterm_releases_tasks_at_once_and_exits_0(
        cluster: Cluster, repo: Repository, tmp_path: Path) -> None:
    (synthetic,) = make_repos(tmp_path / "repos", 1, n_commits=16)
    cluster.start_producer()
    leaving = cluster.start_consumer("leaving", slots=2)
    staying = cluster.start_consumer("staying", slots=2)
    ids = cluster.submit([task_request(synthetic, f"term-{i}", tester="slow")
                          for i in range(6)])
    wait_until(lambda: _owned_with_steps(cluster, "leaving", 2), 30,
               "the consumer to be mid-bisection on two tasks")
    code = leaving.service.stop(20)
    exited_at = time.monotonic()
    assert code == 0, leaving.service.log_text()[-3000:]
    # What it held is released (the grace period is short next to a bisection) ...
    released = [int(e["task_id"]) for e in events_named(leaving.service, "task_finished")
                if e.get("outcome") == "released"]
    assert released, leaving.service.log_text()[-3000:]
    # ... and back to waiting at once (within ~2 s of the exit), no attempt counted.
    for task_id in released:
        task = cluster.task(task_id)
        assert task["status"] == "wait" or (
            task["status"] == "processing" and task["owner"] == "staying"), task
        assert task["attempts"] == 0, task
    assert time.monotonic() - exited_at < 2.0
    assert not events_named(leaving.service, "task_crashed")
    held = released

    tasks = _wait_all_final(cluster, 6, timeout=60)
    assert {t["status"] for t in tasks.values()} == {"completed"}, tasks
    assert {t["bad_commit"] for t in tasks.values()} == {synthetic.culprit}
    for task_id in held:
        task = tasks[task_id]
        assert (task["claims"], task["attempts"]) == (2, 0), task
    _assert_each_reported_once(cluster, "completed", ids)  # waits for the log lines
    staying_done = {int(e["task_id"]) for e in events_named(staying.service, "task_finished")
                    if e.get("outcome") == "completed"}
    assert set(held) <= staying_done
    assert not events_named(cluster.producer, "lease_expired")
    _assert_slots_respected(cluster)
    _shutdown_clean(cluster)


# ---------------------------------------------------------------- 4. the producer dies
@pytest.mark.timeout(120)
async def test_producer_killed_and_restarted_loses_nothing(
        cluster: Cluster, repo: Repository, tmp_path: Path) -> None:
    (synthetic,) = make_repos(tmp_path / "repos", 1, n_commits=16)
    first = cluster.start_producer()
    consumers = [cluster.start_consumer(name, slots=2) for name in ("p1", "p2")]
    ids = cluster.submit([task_request(synthetic, f"restart-{i}", tester="slow")
                          for i in range(8)])
    wait_until(lambda: all(_owned_with_steps(cluster, c.name, 2) for c in consumers), 30,
               "both consumers to be mid-bisection on two tasks each")
    killed_at = time.time()
    cluster.crash(first)
    # Stay down until a bisection has ended while nobody could record it.
    wait_until(lambda: any(parse_time(e["timestamp"]) > killed_at
                           for c in consumers
                           for e in events_named(c.service, "engine_exited")),
               30, "a bisection to end while the producer is down")
    second = cluster.start_producer()

    tasks = _wait_all_final(cluster, 8, timeout=90)
    assert {t["status"] for t in tasks.values()} == {"completed"}, tasks
    assert {t["bad_commit"] for t in tasks.values()} == {synthetic.culprit}
    # The restarted producer gave every lease a full period: no task lost its claim.
    assert {(t["claims"], t["attempts"]) for t in tasks.values()} == {(1, 0)}, tasks
    assert not events_named(second, "lease_expired")
    for consumer in consumers:
        assert not events_named(consumer.service, "lease_lost", "finish_failed",
                                "finish_rejected")
    _assert_each_reported_once(cluster, "completed", ids)
    # Some finishes were made while the producer was down, and retried until it was back.
    recorded_by_second = collections.Counter(
        int(e["task_id"]) for e in events_named(second, "task_finished"))
    recorded_by_first = collections.Counter(
        int(e["task_id"]) for e in events_named(first, "task_finished"))
    assert recorded_by_first + recorded_by_second == collections.Counter(ids)
    retried = [e for c in consumers for e in events_named(c.service, "producer_retry")
               if e.get("path") == "/api/v1/internal/finish"]
    assert retried
    for task_id in ids:
        by_attempt = _steps_by_attempt(await repo.steps_of_task(task_id))
        assert list(by_attempt) == [1], (task_id, sorted(by_attempt))
    _assert_slots_respected(cluster)
    _shutdown_clean(cluster)


# ---------------------------------------------------------------- 5. timeout and cancel
@pytest.mark.timeout(90)
async def test_hanging_bisection_times_out_and_a_cancel_stops_one(
        cluster: Cluster, repo: Repository, tmp_path: Path) -> None:
    (synthetic,) = make_repos(tmp_path / "repos", 1, n_commits=16)
    cluster.start_producer()
    consumer = cluster.start_consumer("c", slots=2)
    hung, doomed = cluster.submit([
        task_request(synthetic, "hang-timeout", tester="hang", timeout=3),
        task_request(synthetic, "hang-cancel", tester="hang"),
    ])

    def test_pids(task_id: int) -> list[tuple[int, Path]]:
        return [(run.pid, Path(run.key)) for run in journal_intervals(consumer.journal)
                if f"/{task_id}-" in run.key]

    wait_until(lambda: test_pids(hung) and test_pids(doomed), 20,
               "both hanging tests to run")
    (hung_pid, hung_dir), = test_pids(hung)
    (doomed_pid, doomed_dir), = test_pids(doomed)
    claimed_at = time.time()

    cluster.cancel(doomed)
    cancelled = wait_until(
        lambda: (t := cluster.task(doomed))["status"] in FINAL and t, 15,
        "the cancelled task to end")
    # compass-ci's four statuses: a cancel ends 'failed', the reason beside it.
    assert (cancelled["status"], cancelled["end_reason"]) == ("failed", "cancelled"), cancelled
    assert time.time() - claimed_at < 10

    failed = wait_until(lambda: (t := cluster.task(hung))["status"] in FINAL and t, 20,
                        "the hanging task to time out")
    assert failed["status"] == "failed" and "timeout" in failed["last_error"], failed
    timed_out = events_named(consumer.service, "task_timeout")
    assert [int(e["task_id"]) for e in timed_out] == [hung]

    # Both subprocess trees are gone: the engines, the test commands, nothing in their dirs.
    engines = {i.key[0]: i for i in engine_intervals(consumer.service)}
    for task_id, pid, work in ((hung, hung_pid, hung_dir), (doomed, doomed_pid, doomed_dir)):
        task_dir = consumer.work_dir / work.relative_to(consumer.work_dir).parts[0]
        wait_until(lambda pid=pid, task_dir=task_dir, task_id=task_id: not (
            support.alive(pid) or support.alive(engines[task_id].pid)
            or support.cwd_under(task_dir)), 5, f"the processes of task {task_id} to end")
        assert engines[task_id].end != float("inf")
    stops = [e for e in events_named(consumer.service, "task_cancelled")]
    assert [int(e["task_id"]) for e in stops] == [doomed]
    _shutdown_clean(cluster)
