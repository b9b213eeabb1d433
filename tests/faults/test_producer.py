"""kill -9 of the producer in the middle of writing many tasks: a client submitting batches
in a loop, and job discovery creating thousands of tasks. After each restart every batch the
client got an answer for is fully there, batches cut off are retried by the client and end
exactly once (dedup by pair), and discovery ends with every expected task exactly once."""

from __future__ import annotations

import random
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from common.repository import Repository
from tests.acceptance.support import API_TOKEN, Cluster, events_named, wait_until
from tests.faults.support import pair_counts, record_figures, task_rows
from tests.producer_support import failed_job, whitelist

pytestmark = [pytest.mark.faults, pytest.mark.acceptance]

BATCH = 250
KILLS = 3
ERROR_ID = "E_BATCH"


class BatchClient(threading.Thread):
    """Submits batches of new pairs in a loop; a batch without an answer (connection cut,
    503 while the producer starts) is sent again, unchanged, until it gets one."""

    def __init__(self, cluster: Cluster, root: Path) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.root = root
        self.stop = threading.Event()
        self.in_flight = threading.Event()
        self.answers: dict[int, dict[str, Any]] = {}
        self.tries: dict[int, int] = {}
        self.errors: list[str] = []
        self.batch = 0

    def requests(self, number: int) -> list[dict[str, Any]]:
        return [{"bad_job_id": f"batch{number}-{i}", "error_id": ERROR_ID,
                 "repo_url": f"{self.root}/repo", "bad_commit": "a" * 40}
                for i in range(BATCH)]

    def run(self) -> None:
        from admin.launcher import http_json

        while not self.stop.is_set():
            number = self.batch
            self.tries[number] = self.tries.get(number, 0) + 1
            self.in_flight.set()
            try:
                status, answer = http_json(
                    self.cluster.base_url + "/api/v1/tasks/batch", method="POST",
                    body={"tasks": self.requests(number)}, token=API_TOKEN, timeout=30)
            except (OSError, urllib.error.URLError) as exc:
                status, answer = 0, str(exc)
            finally:
                self.in_flight.clear()
            if status == 200:
                self.answers[number] = answer
                self.batch += 1
            else:
                if status not in (0, 503):
                    self.errors.append(f"{status}: {answer}")
                time.sleep(0.1)

    def finish_current(self, timeout: float) -> None:
        """Stop after the batch in flight has an answer."""
        last = self.batch
        deadline = time.monotonic() + timeout
        while self.batch == last and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stop.set()
        self.join(timeout)


@pytest.mark.timeout(120)
async def test_producer_killed_during_batch_submits_loses_and_duplicates_nothing(
        cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_producer()
    client = BatchClient(cluster, tmp_path)
    client.start()
    rng = random.Random(7)
    restarts = []
    try:
        for kill in range(KILLS):
            wait_until(lambda kill=kill: client.batch >= 3 * (kill + 1), 30,
                       "more batches answered")
            wait_until(client.in_flight.is_set, 10, "a batch in flight", interval=0.002)
            time.sleep(rng.uniform(0.0, 0.05))  # noqa: ASYNC251 (inside the request)
            killed_at = time.monotonic()
            cluster.crash(cluster.producer)
            cluster.start_producer()
            restarts.append(time.monotonic() - killed_at)
        client.finish_current(30)
    finally:
        client.stop.set()
    assert not client.errors, client.errors[:3]

    counts = pair_counts(cluster.db_url)
    submitted = {(f"batch{n}-{i}", ERROR_ID) for n in client.answers for i in range(BATCH)}
    # Every answered batch is there, each pair exactly once, and nothing else.
    assert set(counts) == submitted, (len(counts), len(submitted))
    assert {c for c in counts.values()} == {1}
    retried = {n: client.answers[n] for n, tries in client.tries.items()
               if tries > 1 and n in client.answers}
    assert len(retried) >= 1
    for answer in client.answers.values():
        assert answer["invalid"] == 0 and answer["created"] + answer["existing"] == BATCH
    cut_mid_insert = sum(1 for a in retried.values() if 0 < a["existing"] < BATCH)
    created_total = sum(a["created"] for a in client.answers.values())
    # Created exactly once: the answers' "created" add up to the rows, so no pair was
    # reported created twice (a retry of a stored pair says "existing").
    assert created_total <= len(submitted)
    assert all(r["bisect_status"] == "wait" for r in task_rows(cluster.db_url))
    record_figures(
        "producer_kill_batch_submit", kills=KILLS, batches=len(client.answers),
        tasks=len(submitted), tasks_lost=0, duplicates=0,
        batches_retried=len(retried), batches_cut_mid_insert=cut_mid_insert,
        restart_to_ready_s=[round(s, 2) for s in restarts],
        answered_created_total=created_total)
    codes = cluster.shutdown()
    assert set(codes.values()) == {0}, codes


# ---------------------------------------------------------------- discovery
WHITELIST = ("last_state.test.pkgbuild.exit_code.1", "stderr.undefined_reference_to_foo",
             "Case.Sensitive.Err")
OTHER = ("stderr.warning_unused", "case.sensitive.err", "not.valid.anymore")
JOBS = 4000


def _seed_jobs(rng: random.Random) -> tuple[list[Any], set[tuple[str, str]]]:
    jobs, expected = [], set()
    for job_id in range(1000, 1000 + JOBS):
        errids = rng.sample(WHITELIST + OTHER, rng.randint(1, 3))
        if not any(e in WHITELIST for e in errids):
            errids.append(WHITELIST[job_id % len(WHITELIST)])
        jobs.append(failed_job(job_id, " ".join(errids)))
        expected |= {(str(job_id), e) for e in errids if e in WHITELIST}
    return jobs, expected


@pytest.mark.timeout(150)
async def test_producer_killed_during_discovery_creates_every_task_once(
        cluster: Cluster, repo: Repository) -> None:
    await whitelist(repo, WHITELIST)
    await whitelist(repo, ["not.valid.anymore"], valid="false")
    jobs, expected = _seed_jobs(random.Random(11))
    await repo.insert_job_rows(jobs)
    # The jobs' repository must pass the allow-list, as every URL read from a job does.
    discovery = {"BISECT_DISCOVERY": "true", "BISECT_DISCOVERY_INTERVAL_S": "0.5",
                 "BISECT_DISCOVERY_BATCH_SIZE": "50", "BISECT_DISCOVERY_PAGE_SIZE": "500",
                 "BISECT_REPO_URL_ALLOW": f"{cluster.root}/,https://git.example/"}

    def count() -> int:
        return len(task_rows(cluster.db_url))

    kills = []
    started = time.monotonic()
    for fraction in (0.2, 0.5):
        cluster.start_producer(**discovery)
        wait_until(lambda f=fraction: count() >= f * len(expected), 60,
                   f"discovery to reach {fraction:.0%}", interval=0.02)
        at = count()
        cluster.crash(cluster.producer)
        kills.append(at)
        assert at < len(expected), "the cycle ended before the kill: make it longer"
    restarted_at = time.monotonic()
    final = cluster.start_producer(**discovery)
    top = max(int(j["id"]) for j in jobs)

    def caught_up() -> bool:
        return any(e.get("cursor") == top for e in events_named(final, "discovery_cycle"))

    wait_until(caught_up, 60, "discovery to finish its cycle after the restarts")
    finished_after_s = time.monotonic() - restarted_at
    total_s = time.monotonic() - started

    counts = pair_counts(cluster.db_url)
    missing = expected - set(counts)
    extra = set(counts) - expected
    duplicated = {p: c for p, c in counts.items() if c > 1}
    assert not missing and not extra and not duplicated, (
        len(missing), len(extra), len(duplicated))
    # Later cycles create nothing more.
    time.sleep(1.2)  # noqa: ASYNC251
    assert count() == len(expected)
    record_figures(
        "producer_kill_discovery", jobs=JOBS, expected_tasks=len(expected),
        tasks_lost=len(missing), duplicates=len(duplicated), unexpected=len(extra),
        killed_at_task_counts=kills, resume_to_complete_s=round(finished_after_s, 1),
        total_s=round(total_s, 1))
    codes = cluster.shutdown()
    assert set(codes.values()) == {0}, codes
