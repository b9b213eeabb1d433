"""The claim loop, the heartbeat loop and the slots that bound running bisections.

A slot is taken *before* claiming, so the consumer never holds a task it cannot start; slots
it took but got no task for go straight back. Running work is kept in a dict keyed by task
id and each slot is released in its task's done-callback. A stop (SIGTERM) ends claiming,
lets running bisections finish within the grace period, then kills and releases the rest.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from common.errors import DatabaseUnavailable
from common.models import FinishOutcome, StoredVerdict
from common.repository import Repository
from common.supervise import RetryPolicy, Supervisor, sleep_or_stop
from consumer.client import (
    ClaimedTask,
    ProducerClient,
    ProducerError,
    ProducerRejected,
    ProducerUnavailable,
)
from consumer.health import Metrics
from consumer.profiles import COMPASS, tester_fingerprint
from consumer.recorder import Recorder, RecorderScope
from consumer.runner import (
    STOP_SHUTDOWN,
    BisectionRun,
    Finish,
    SpecError,
    build_spec,
    decide,
    task_timeout_s,
)
from consumer.settings import ConsumerSettings

log = structlog.get_logger(__name__)

PRODUCER_BACKOFF = RetryPolicy(base_s=0.5, cap_s=15.0)
CLAIM_LOOP_EXIT_S = 15.0  # how long an in-flight claim may take once stopping
SHUTDOWN_FINISH_S = 10.0  # how long final finish calls may retry while shutting down


def remove_empty_task_dirs(work_dir: str) -> int:
    """Empty ``<task>-<claim>`` folders a killed consumer left behind. Only empty ones: a
    folder with a worktree in it may belong to a live engine (or is swept by the engine)."""
    removed = 0
    try:
        entries = list(os.scandir(work_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            try:
                os.rmdir(entry.path)
                removed += 1
            except OSError:
                continue
    return removed


@dataclass
class Running:
    """One task this consumer holds: its claim, its asyncio task, its engine run."""

    task: ClaimedTask
    job: asyncio.Task[None] | None = None
    run: BisectionRun | None = None
    stop_reason: str | None = None
    started: float = field(default_factory=time.monotonic)

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.run is not None:
            self.run.stop(reason)


class Worker:
    """Claims tasks from the producer and runs each as an engine subprocess."""

    def __init__(self, settings: ConsumerSettings, client: ProducerClient, repo: Repository,
                 metrics: Metrics, *, stop: asyncio.Event | None = None) -> None:
        self.settings = settings
        self.client = client
        self.repo = repo
        self.metrics = metrics
        self.stop_event = stop or asyncio.Event()
        self.running: dict[int, Running] = {}
        self.lease_seconds = 30.0
        self._slots = asyncio.Semaphore(settings.slots)
        self._supervisor = Supervisor()
        self._testers = settings.tester_names
        self._abort = asyncio.Event()
        self._work_started = asyncio.Event()
        self.drained = False
        self.log = log.bind(consumer_id=settings.consumer_id)

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self) -> None:
        """Stop claiming; running bisections get the grace period."""
        if not self.stop_event.is_set():
            self.log.info("shutdown_requested", running=len(self.running))
        self.stop_event.set()

    def abort(self) -> None:
        """Skip what is left of the grace period (a second signal)."""
        self.stop_event.set()
        self._abort.set()

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    async def run(self) -> int:
        """Serve until stopped or drained; 0 on a clean stop, 1 when a loop died."""
        self.log.info("worker_started", slots=self.settings.slots, testers=self._testers,
                      drain=self.settings.drain)
        removed = await asyncio.to_thread(remove_empty_task_dirs, self.settings.work_dir)
        if removed:
            self.log.info("stale_task_dirs_removed", count=removed)
        claim = self._supervisor.start("claim_loop", self._claim_loop)
        self._supervisor.start("heartbeat_loop", self._heartbeat_loop)
        failed = asyncio.create_task(self._supervisor.failed.wait())
        stopped = asyncio.create_task(self.stop_event.wait())
        try:
            await asyncio.wait({failed, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()
            stopped.cancel()
        self.stop_event.set()
        await asyncio.wait({claim}, timeout=CLAIM_LOOP_EXIT_S)
        await self._shutdown()
        await self._supervisor.stop()
        code = 1 if self._supervisor.failure else 0
        self.log.info("worker_stopped", exit_code=code, drained=self.drained)
        return code

    async def _shutdown(self) -> None:
        if self._jobs():
            self.log.info("shutdown_grace", running=len(self.running),
                          grace_s=self.settings.grace_s)
        deadline = time.monotonic() + self.settings.grace_s
        abort = asyncio.create_task(self._abort.wait())
        while self._jobs() and not self._abort.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.wait({*self._jobs(), abort}, timeout=remaining,
                               return_when=asyncio.FIRST_COMPLETED)
        abort.cancel()
        left = list(self.running.values())
        if left:
            self.log.warning("shutdown_grace_over", releasing=[r.task.id for r in left])
            for item in left:
                item.stop(STOP_SHUTDOWN)
            jobs = self._jobs()
            if jobs:
                await asyncio.wait(jobs, timeout=self.settings.kill_grace_s
                                   + SHUTDOWN_FINISH_S + 10)
        for job in self._jobs():
            job.cancel()

    def _jobs(self) -> set[asyncio.Task[None]]:
        return {r.job for r in self.running.values() if r.job is not None and not r.job.done()}

    # ------------------------------------------------------------------ claim loop
    async def _acquire_free_slots(self) -> int:
        """Wait for one free slot, then take every other free one; 0 when stopping."""
        acquire = asyncio.create_task(self._slots.acquire())
        stop = asyncio.create_task(self.stop_event.wait())
        await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not acquire.done():
            acquire.cancel()
            try:
                await acquire
            except asyncio.CancelledError:
                return 0
        if acquire.cancelled():
            return 0
        held = 1
        if self.stop_event.is_set():
            self._slots.release()
            return 0
        while not self._slots.locked():
            await self._slots.acquire()  # free: returns at once
            held += 1
        return held

    def _release_slots(self, count: int) -> None:
        for _ in range(count):
            self._slots.release()

    async def _claim_loop(self) -> None:
        idle_s = self.settings.poll_min_s
        failures = 0
        while not self.stop_event.is_set():
            held = await self._acquire_free_slots()
            if held == 0:
                return
            self.metrics.claim_requests.inc()
            try:
                answer = await self.client.claim(held, self._testers, self._claim_wait_s())
            except (ProducerError, OSError) as exc:
                self._release_slots(held)
                failures += 1
                self.metrics.producer_errors.labels(call="claim").inc()
                delay = PRODUCER_BACKOFF.delay(failures)
                event = ("producer_unreachable" if isinstance(exc, ProducerUnavailable)
                         else "claim_failed")
                self.log.warning(event, error=str(exc), retry_in_s=round(delay, 2),
                                 running=len(self.running))
                if await sleep_or_stop(self.stop_event, delay):
                    return
                continue
            failures = 0
            self.lease_seconds = answer.lease_seconds
            tasks = answer.tasks
            if len(tasks) > held:  # the producer broke its promise: hand the excess back
                self.log.error("claim_too_many", asked=held, got=len(tasks))
                for extra in tasks[held:]:
                    await self._release_unstarted(extra, "over slot limit")
                tasks = tasks[:held]
            self._release_slots(held - len(tasks))
            for task in tasks:
                if self.stop_event.is_set():
                    self._slots.release()
                    await self._release_unstarted(task, "consumer shutting down")
                else:
                    self._start(task)
            if tasks:
                idle_s = self.settings.poll_min_s
                continue
            if self.settings.drain and not self.running:
                self.drained = True
                self.log.info("drain_complete")
                self.stop_event.set()
                return
            if answer.long_poll:
                # The producer already waited for work; ask again at once.
                idle_s = self.settings.poll_min_s
                continue
            if await sleep_or_stop(self.stop_event, idle_s):
                return
            idle_s = min(self.settings.poll_max_s, idle_s * 2)

    def _claim_wait_s(self) -> float:
        """How long the producer may hold an empty claim: the idle poll ceiling, within the
        request timeout; none in drain mode, which must see "nothing waiting" at once."""
        if self.settings.drain:
            return 0.0
        return max(0.0, min(self.settings.poll_max_s, self.settings.producer_timeout_s - 2.0))

    async def _release_unstarted(self, task: ClaimedTask, reason: str) -> None:
        try:
            await asyncio.shield(self.client.finish(task.id, FinishOutcome.RELEASED,
                                                    lease=task.lease, reason=reason,
                                                    give_up_after_s=SHUTDOWN_FINISH_S))
        except ProducerError as exc:
            self.log.warning("release_failed", task_id=task.id, error=str(exc))

    def _start(self, task: ClaimedTask) -> None:
        item = Running(task)
        self.running[task.id] = item
        self.metrics.claims.inc()
        self._work_started.set()
        self.metrics.slots_busy.set(len(self.running))
        self.log.info("task_claimed", task_id=task.id, claim=task.claim, tester=task.tester,
                      error_id=task.error_id, git_url=task.git_url)
        item.job = asyncio.create_task(self._work(item), name=f"task-{task.id}")
        item.job.add_done_callback(functools.partial(self._done, task.id))

    def _done(self, task_id: int, _job: asyncio.Task[None]) -> None:
        self.running.pop(task_id, None)
        self._slots.release()
        self.metrics.slots_busy.set(len(self.running))

    # ------------------------------------------------------------------ one task
    async def _work(self, item: Running) -> None:
        task = item.task
        tlog = self.log.bind(task_id=task.id, claim=task.claim)
        try:
            finish = await self._bisect(item, tlog)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            tlog.exception("task_crashed")
            finish = Finish(FinishOutcome.FAILED,
                            f"consumer error: {type(exc).__name__}: {exc}"[:1000])
        if item.stop_reason is not None and item.stop_reason != STOP_SHUTDOWN:
            tlog.info("task_stopped", reason=item.stop_reason)
            return
        if finish.outcome is None:
            tlog.info("task_stopped", reason=finish.reason)
            return
        await asyncio.shield(self._finish(task, finish, tlog))

    async def _bisect(self, item: Running, tlog: Any
                      ) -> Finish:
        task = item.task
        name = task.tester or COMPASS
        profile = self.settings.testers.get(name)
        if profile is None:
            return Finish(FinishOutcome.FAILED, f"unknown tester {name!r} on consumer "
                                          f"{self.settings.consumer_id}")
        tester = profile.tester_spec()
        fingerprint = tester_fingerprint(tester)
        known: list[StoredVerdict] = []
        # A retry that asked for fresh runs reuses no stored verdict.
        if task.git_url and not task.extra.get("fresh_runs"):
            try:
                known = await self.repo.verdicts_in_scope(task.git_url, fingerprint,
                                                          task.error_id)
            except DatabaseUnavailable as exc:
                tlog.warning("known_verdicts_unavailable", error=str(exc))
        work_dir = os.path.join(self.settings.work_dir, f"{task.id}-{task.claim}")
        try:
            spec = build_spec(task, profile, settings=self.settings, known_verdicts=known,
                              work_dir=work_dir)
        except SpecError as exc:
            return Finish(FinishOutcome.FAILED, f"bad task: {exc}")
        recorder = Recorder(self.repo, RecorderScope(
            task_id=task.id, attempt=task.claim, repo_url=task.git_url or "",
            tester_fingerprint=fingerprint, error_id=task.error_id,
            bad_job_id=task.bad_job_id), self.metrics)
        run = BisectionRun(self.settings.engine_command, spec, recorder,
                           timeout_s=task_timeout_s(task.timeout,
                                                     self.settings.task_timeout_s),
                           kill_grace_s=self.settings.kill_grace_s, work_dir=work_dir)
        item.run = run
        if item.stop_reason is not None:
            run.stop(item.stop_reason)
        tlog.info("engine_starting", tester=name, known_verdicts=len(known))
        result = await run.run()
        self.metrics.bisection_duration.observe(result.duration_s)
        finish = decide(result, work_dir=work_dir, timeout_action=self.settings.timeout_action,
                        test_command=(profile.options.get("command")
                                      if profile.kind == "command" else None))
        if finish.outcome is FinishOutcome.COMPLETED:
            await recorder.record_regression(
                task.git_url, compass_job=bool(task.extra.get("compass_job")),
                discovered=bool(task.extra.get("discovered")),
                category=str(task.extra.get("category") or ""))
        return finish

    async def _finish(self, task: ClaimedTask, finish: Finish,
                      tlog: Any) -> None:
        assert finish.outcome is not None
        give_up = SHUTDOWN_FINISH_S if self.stopping else self.settings.finish_retry_s
        try:
            answer = await self.client.finish(task.id, finish.outcome, lease=task.lease,
                                              reason=finish.reason, result=finish.result,
                                              give_up_after_s=give_up)
        except ProducerRejected as exc:
            self.metrics.producer_errors.labels(call="finish").inc()
            tlog.error("finish_rejected", error=str(exc), outcome=finish.outcome.value)
            return
        except ProducerError as exc:
            self.metrics.producer_errors.labels(call="finish").inc()
            tlog.error("finish_failed", error=str(exc), outcome=finish.outcome.value)
            return
        if not answer.accepted:
            self.metrics.lease_losses.inc()
            tlog.warning("lease_lost", during="finish", outcome=finish.outcome.value)
            return
        if finish.outcome is FinishOutcome.COMPLETED:
            self.metrics.completions.inc()
        elif finish.outcome is FinishOutcome.FAILED:
            self.metrics.failures.labels(reason=finish.reason.split(":")[0][:40]).inc()
        else:
            self.metrics.releases.inc()
        tlog.info("task_finished", outcome=finish.outcome.value, reason=finish.reason,
                  status=answer.status, bad_commit=finish.result.get("bad_commit"))

    # ------------------------------------------------------------------ heartbeat loop
    async def _heartbeat_loop(self) -> None:
        failures = 0
        while True:
            # Idle: nothing to renew. A task just claimed has a fresh lease, so the first
            # heartbeat is due lease/3 after the claim (whose answer set lease_seconds).
            self._work_started.clear()
            if not self.running:
                await self._work_started.wait()
            interval = max(0.1, self.lease_seconds / 3)
            if failures:
                interval = min(interval, PRODUCER_BACKOFF.delay(failures))
            await asyncio.sleep(interval)
            leases = {task_id: item.task.lease for task_id, item in self.running.items()}
            if not leases:
                continue
            try:
                answer = await self.client.heartbeat(leases)
            except (ProducerError, OSError) as exc:
                failures += 1
                self.metrics.producer_errors.labels(call="heartbeat").inc()
                self.log.warning("heartbeat_failed", error=str(exc), tasks=len(leases))
                continue
            failures = 0
            self.lease_seconds = answer.lease_seconds
            for order in answer.stop:
                self._stop_task(order.task_id, order.reason)

    def _stop_task(self, task_id: int, reason: str) -> None:
        item = self.running.get(task_id)
        if item is None or item.stop_reason is not None:
            # Not ours, or already stopping: the producer repeats its order in every
            # heartbeat answer until the run has ended and the task is finished.
            return
        reason = reason or "stopped"
        if reason == "cancelled":
            self.metrics.cancellations.inc()
        else:
            self.metrics.lease_losses.inc()
        self.log.warning("lease_lost" if reason == "lease_lost" else "task_cancelled",
                         task_id=task_id, reason=reason)
        item.stop(reason)
