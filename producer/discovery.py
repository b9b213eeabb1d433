"""Job discovery: failed compass-ci jobs whose error ids are whitelisted become tasks.

What counts as a failed job is what compass-ci's own bisect service takes (compass-ci.md §3):
finished (``istage`` 9) with complete data (``idata_readiness`` 3), a health the site bisects
(``BISECT_DISCOVERY_HEALTH``, default ``abort``), error ids and a repository, and not itself
submitted by a bisection (``j.bad_job_id``). ``incomplete``/``norun`` data is never bisected.

Incremental: a cursor row holds the highest job id below which every job is handled, so a
restart continues where it stopped and a cycle reads only what is new. Job ids grow with
submission time but jobs finish out of order, so the cursor never passes a job whose final row
is not written yet (unless it is older than the pending horizon: such a job is taken as lost),
nor a job whose tasks could not be created. Jobs above the cursor may be read again in a later
cycle; the writer's dedup makes that harmless and an in-memory set of handled ids makes it
cheap. A job that can never become a task (no repository, a value that cannot be stored) is
skipped with a logged reason and a metric, and never holds back its neighbours.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from common.compass_job import HEALTH_CODES, CompassJob
from common.errors import DatabaseUnavailable, ValidationError
from common.models import NewTask
from common.repository import Repository
from common.supervise import RetryPolicy, sleep_or_stop
from producer.metrics import ProducerMetrics
from producer.settings import ProducerSettings
from producer.submission import new_task_from_job
from producer.writer import TaskStateWriter

log = structlog.get_logger(__name__)

CURSOR_STATE = "discovery_cursor"
# A job whose tasks fail to insert this many cycles in a row is skipped (and logged) rather
# than holding the cursor for ever.
MAX_SUBMIT_FAILURES = 3


@dataclass(frozen=True)
class CycleReport:
    jobs_read: int
    candidates: int
    created: int
    cursor: int
    seconds: float
    skipped: int = 0
    held_by: int | None = None  # the job whose tasks could not be created this cycle


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
        self._failures: dict[int, int] = {}
        self._healths = tuple((name, HEALTH_CODES[name]) for name in settings.discovery_health)

    async def cursor(self) -> int:
        state = await self._repo.get_state(CURSOR_STATE)
        return int(state[0]) if state and state[0].isdigit() else 0

    def _suite_wanted(self, job: CompassJob) -> bool:
        include = self._settings.discovery_suites_include
        if include and job.suite not in include:
            return False
        return job.suite not in self._settings.discovery_suites_exclude

    def _tasks_of(self, job: CompassJob, whitelist: set[str]) -> list[NewTask]:
        """The job's tasks; raises ValidationError when the job can never become one."""
        if not self._suite_wanted(job) or job.submitted_by_bisect:
            return []
        errids = [errid for errid in job.errids if errid in whitelist]
        return [new_task_from_job(job, errid, tester=self._settings.discovery_tester,
                                  source="discovery",
                                  repo_url_allow=self._settings.repo_url_allow)
                for errid in errids]

    def _skip(self, job_id: int, reason: str, why: str) -> None:
        log.warning("discovery_job_skipped", job_id=job_id, reason=reason, detail=why)
        if self._metrics is not None:
            self._metrics.discovery_skipped.labels(reason).inc()
        self._handled.add(job_id)
        self._failures.pop(job_id, None)

    async def run_cycle(self, stop: asyncio.Event | None = None) -> CycleReport:
        started = time.perf_counter()
        low = await self.cursor()
        # Read before the pending check: every job up to ``top`` existed then, so any of
        # them still unsettled is found by that check.
        top = await self._repo.max_job_id()
        whitelist = await self._repo.regression_whitelist()
        horizon = int(self._clock()) - self._settings.discovery_pending_horizon_s
        pending = await self._repo.first_unsettled_job_after(low, horizon)
        page_size = self._settings.discovery_page_size
        batch: list[tuple[int, list[NewTask]]] = []
        held_by: int | None = None
        after = low
        jobs_read = candidates = created = skipped = 0
        interrupted = False
        while not interrupted:
            jobs = await self._repo.discovery_jobs_after(after, page_size, self._healths)
            for job in jobs:
                if job.id in self._handled:
                    continue
                jobs_read += 1
                try:
                    tasks = self._tasks_of(job, whitelist) if whitelist else []
                except ValidationError as exc:
                    self._skip(job.id, "unfit", exc.reason)
                    skipped += 1
                    continue
                batch.append((job.id, tasks))
                if sum(len(t) for _, t in batch) >= self._settings.discovery_batch_size:
                    made, tried, failed_at = await self._submit(batch)
                    created, candidates, batch = created + made, candidates + tried, []
                    if failed_at is not None:
                        held_by = failed_at if held_by is None else min(held_by, failed_at)
                        interrupted = True
                        break
            interrupted = interrupted or len(jobs) < page_size or (
                stop is not None and stop.is_set())
            if jobs:
                after = jobs[-1].id
        if batch:
            made, tried, failed_at = await self._submit(batch)
            created, candidates = created + made, candidates + tried
            if failed_at is not None:
                held_by = failed_at if held_by is None else min(held_by, failed_at)
        new_low = top if pending is None else min(top, pending - 1)
        if held_by is not None:
            new_low = min(new_low, held_by - 1)
        if stop is not None and stop.is_set():
            new_low = low  # an interrupted scan proves nothing about what it did not reach
        new_low = max(low, new_low)
        if new_low != low:
            await self._repo.put_state(CURSOR_STATE, str(new_low))
        self._handled = {job_id for job_id in self._handled if job_id > new_low}
        report = CycleReport(jobs_read, candidates, created, new_low,
                             time.perf_counter() - started, skipped, held_by)
        if self._metrics is not None:
            self._metrics.discovery_jobs.inc(jobs_read)
            self._metrics.discovery_seconds.observe(report.seconds)
            self._metrics.discovery_cursor.set(new_low)
            self._metrics.discovery_lag.set(max(0, top - new_low))
            self._metrics.tasks_created.labels("discovery").inc(created)
        log.info("discovery_cycle", jobs_read=jobs_read, candidates=candidates,
                 created=created, skipped=skipped, cursor=new_low, pending_job=pending,
                 held_by=held_by, seconds=round(report.seconds, 3))
        return report

    async def _submit(self, batch: list[tuple[int, list[NewTask]]]
                      ) -> tuple[int, int, int | None]:
        """Create the batch's tasks: (created, tried, lowest job id not handled). A failing
        batch is retried job by job so that one bad job cannot fail its neighbours."""
        tasks = [task for _, job_tasks in batch for task in job_tasks]
        try:
            results = await self._writer.submit(tasks) if tasks else []
        except DatabaseUnavailable:
            return 0, len(tasks), batch[0][0]
        except Exception as exc:
            log.warning("discovery_batch_failed", jobs=len(batch), error=str(exc)[:300])
            return await self._submit_one_by_one(batch)
        self._handled.update(job_id for job_id, _ in batch)
        for job_id, _ in batch:
            self._failures.pop(job_id, None)
        return sum(1 for r in results if r.created), len(tasks), None

    async def _submit_one_by_one(self, batch: list[tuple[int, list[NewTask]]]
                                 ) -> tuple[int, int, int | None]:
        created = tried = 0
        held_by: int | None = None
        for job_id, tasks in batch:
            tried += len(tasks)
            try:
                results = await self._writer.submit(tasks) if tasks else []
            except DatabaseUnavailable:
                return created, tried, job_id if held_by is None else held_by
            except Exception as exc:
                failures = self._failures.get(job_id, 0) + 1
                self._failures[job_id] = failures
                if failures >= MAX_SUBMIT_FAILURES:
                    self._skip(job_id, "insert_failed", f"{failures} cycles: {str(exc)[:300]}")
                    continue
                log.warning("discovery_job_failed", job_id=job_id, failures=failures,
                            error=str(exc)[:300])
                held_by = job_id if held_by is None else held_by
                continue
            created += sum(1 for r in results if r.created)
            self._handled.add(job_id)
            self._failures.pop(job_id, None)
        return created, tried, held_by

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
