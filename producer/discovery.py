"""Job discovery: failed jobs whose error ids are whitelisted become tasks.

Incremental: a cursor row holds the highest job id below which every job is handled, so a
restart continues where it stopped and a cycle reads only what is new. Job ids grow with
submission time but jobs finish out of order, so the cursor never passes a job that is still
running (unless it is older than the pending horizon: such a job is taken as lost). Failed
jobs above the cursor may be read again in a later cycle; the writer's dedup makes that
harmless and an in-memory set of handled ids makes it cheap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from common.models import Job, NewTask
from common.repository import Repository
from common.supervise import RetryPolicy, sleep_or_stop
from producer.metrics import ProducerMetrics
from producer.settings import ProducerSettings
from producer.submission import new_task_from_job
from producer.writer import TaskStateWriter

log = structlog.get_logger(__name__)

CURSOR_STATE = "discovery_cursor"


@dataclass(frozen=True)
class CycleReport:
    jobs_read: int
    candidates: int
    created: int
    cursor: int
    seconds: float


class JobDiscovery:
    def __init__(self, repo: Repository, writer: TaskStateWriter, settings: ProducerSettings,
                 metrics: ProducerMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._repo = repo
        self._writer = writer
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._handled: set[int] = set()

    async def cursor(self) -> int:
        state = await self._repo.get_state(CURSOR_STATE)
        return int(state[0]) if state and state[0].isdigit() else 0

    def _suite_wanted(self, job: Job) -> bool:
        suite = job.suite or ""
        include = self._settings.discovery_suites_include
        if include and suite not in include:
            return False
        return suite not in self._settings.discovery_suites_exclude

    def _tasks_of(self, job: Job, whitelist: set[str]) -> list[NewTask]:
        if not self._suite_wanted(job):
            return []
        seen: set[str] = set()
        tasks = []
        for errid in job.errids:
            if errid in whitelist and errid not in seen:
                seen.add(errid)
                tasks.append(new_task_from_job(job, errid, tester=self._settings.discovery_tester,
                                               source="discovery"))
        return tasks

    async def run_cycle(self, stop: asyncio.Event | None = None) -> CycleReport:
        started = time.perf_counter()
        low = await self.cursor()
        # Read before the pending check: every job up to ``top`` existed then, so any of
        # them still running is found by that check.
        top = await self._repo.max_job_id()
        whitelist = await self._repo.regression_whitelist()
        horizon = int(self._clock()) - self._settings.discovery_pending_horizon_s
        pending = await self._repo.first_unfinished_job_after(low, horizon)
        page_size = self._settings.discovery_page_size
        batch: list[NewTask] = []
        after = low
        jobs_read = candidates = created = 0
        while stop is None or not stop.is_set():
            jobs = await self._repo.failed_jobs_after(after, page_size)
            for job in jobs:
                if job.id in self._handled:
                    continue
                jobs_read += 1
                batch.extend(self._tasks_of(job, whitelist))
                self._handled.add(job.id)
                if len(batch) >= self._settings.discovery_batch_size:
                    created += await self._submit(batch)
                    candidates += len(batch)
                    batch = []
            if len(jobs) < page_size:
                break
            after = jobs[-1].id
        if batch:
            created += await self._submit(batch)
            candidates += len(batch)
        new_low = max(low, top if pending is None else min(top, pending - 1))
        if stop is not None and stop.is_set():
            new_low = low  # an interrupted scan proves nothing about what it did not reach
        if new_low != low:
            await self._repo.put_state(CURSOR_STATE, str(new_low))
        self._handled = {job_id for job_id in self._handled if job_id > new_low}
        report = CycleReport(jobs_read, candidates, created, new_low,
                             time.perf_counter() - started)
        if self._metrics is not None:
            self._metrics.discovery_jobs.inc(jobs_read)
            self._metrics.discovery_seconds.observe(report.seconds)
            self._metrics.discovery_cursor.set(new_low)
            self._metrics.discovery_lag.set(max(0, top - new_low))
            self._metrics.tasks_created.labels("discovery").inc(created)
        log.info("discovery_cycle", jobs_read=jobs_read, candidates=candidates,
                 created=created, cursor=new_low, pending_job=pending,
                 seconds=round(report.seconds, 3))
        return report

    async def _submit(self, batch: list[NewTask]) -> int:
        results = await self._writer.submit(batch)
        return sum(1 for result in results if result.created)

    async def run(self, stop: asyncio.Event) -> None:
        """The supervised loop: a failing cycle is logged and retried with backoff."""
        policy = RetryPolicy(base_s=1.0, cap_s=max(5.0, self._settings.discovery_interval_s))
        failures = 0
        while not stop.is_set():
            try:
                await self.run_cycle(stop)
                failures = 0
                if self._metrics is not None:
                    self._metrics.discovery_cycles.labels("ok").inc()
                delay = self._settings.discovery_interval_s
            except Exception as exc:
                failures += 1
                if self._metrics is not None:
                    self._metrics.discovery_cycles.labels("error").inc()
                log.warning("discovery_cycle_failed", error=str(exc), failures=failures)
                delay = policy.delay(failures)
            if await sleep_or_stop(stop, delay):
                return
