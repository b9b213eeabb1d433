"""The task-state writer: the one place where a task's status or owner changes.

Manticore has no compare-and-swap and no unique keys, so two processes doing
"SELECT, then UPDATE" can both win. Every state change therefore runs here, in one producer
process, under one asyncio lock: no interleaving can create two tasks for one
(bad_job_id, error_id) or give a task two owners. Reads need no lock.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pymysql
import structlog

from common import ids
from common.errors import DatabaseUnavailable, ValidationError
from common.models import FinishOutcome, NewTask, StopReason, Task, TaskStatus
from common.repository import Repository, new_task_row, task_from_row
from producer.adoption import adopt, needs_adoption
from producer.errors import InvalidTransition, NotOwner, ProducerError, TaskNotFound
from producer.leases import lease_matches, lease_secret

log = structlog.get_logger(__name__)

# The task's ``extra`` flag that tells consumers to reuse no stored verdict.
FRESH_RUNS = "fresh_runs"


@dataclass(frozen=True)
class SubmitResult:
    task: Task
    created: bool


@dataclass(frozen=True)
class HeartbeatAnswer:
    renewed: list[int]
    stop: list[tuple[int, StopReason]]


@dataclass(frozen=True)
class SweepReport:
    requeued: list[int]
    failed: list[int]
    cancelled: list[int]


def _is_duplicate(exc: BaseException) -> bool:
    return isinstance(exc, pymysql.err.MySQLError) and (
        (exc.args and exc.args[0] == 1062) or "duplicate" in str(exc).lower())


# Columns named in a database's "value does not fit" errors, as the API calls them.
_API_FIELD = {"git_url": "repo_url", "known_bad_commit": "bad_commit", "project": "repo_url",
              "priority_level": "priority", "name": "error_id", "error_key": "error_id"}
_COLUMN = re.compile(r"column '([A-Za-z_]+)'")


def _item_error(exc: BaseException) -> ValidationError | None:
    """The error an item's own values caused (too long for a column, not encodable), as a
    4xx naming the field; None when the failure is not the item's fault."""
    if isinstance(exc, ValidationError):
        return exc
    if isinstance(exc, UnicodeError):
        return ValidationError("body", "holds text that cannot be stored (a lone surrogate?)")
    if isinstance(exc, pymysql.err.DataError | pymysql.err.OperationalError) and exc.args and (
            exc.args[0] in (1264, 1265, 1366, 1406)):
        match = _COLUMN.search(str(exc.args[-1]))
        column = match.group(1) if match else "body"
        return ValidationError(_API_FIELD.get(column, column),
                               "is too long or has characters the database cannot store")
    return None


class TaskStateWriter:
    def __init__(self, repo: Repository, *, lease_s: int, max_attempts: int,
                 clock: Callable[[], float] = time.time, max_claims_per_consumer: int = 64,
                 max_long_polls: int = 200, default_tester: str = "compass",
                 repo_url_allow: Sequence[str] = ()) -> None:
        self._repo = repo
        # The tester that runs rows compass-ci's own service wrote (they name none), and the
        # repository URLs their jobs may name.
        self._default_tester = default_tester
        self._repo_url_allow = tuple(repo_url_allow)
        self._lease_ms = lease_s * 1000
        self.lease_s = lease_s
        self._max_attempts = max_attempts
        self._clock = clock
        self._lock = asyncio.Lock()
        self._grace_until_ms = 0
        # Consumers long-polling for work, with the testers they run; woken when a task one
        # of those testers can take becomes claimable. At most ``max_long_polls`` at once.
        self._work_waiters: list[tuple[frozenset[str], asyncio.Future[None]]] = []
        self._max_long_polls = max_long_polls
        # Processing tasks per owner (rebuilt from the table by every sweep), for the cap.
        self._held: collections.Counter[str] = collections.Counter()
        self._max_claims = max_claims_per_consumer
        # Signs lease secrets (producer.leases); set when this process becomes the writer.
        self._lease_key = b""
        self._closing = False
        # Submissions waiting for the lock; whoever gets it creates them all in one go.
        self._submit_queue: list[tuple[list[NewTask], asyncio.Future[list[SubmitResult]]]] = []

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def start(self) -> None:
        """Called when this process becomes the writer: consumers that could not reach the
        previous producer keep their leases for one full period before the sweeper looks."""
        self.grant_grace()

    def grant_grace(self) -> None:
        """No lease expires before one full period from now: after a (re)start, or while
        the database is unreachable and heartbeats cannot be recorded."""
        self._grace_until_ms = max(self._grace_until_ms, self._now_ms() + self._lease_ms)

    def close(self) -> None:
        """The producer is stopping: end every long poll now and start no new one."""
        self._closing = True
        self.wake_claimers()

    def wake_claimers(self, testers: Iterable[str | None] | None = None) -> None:
        """Wake long-polling claims: with ``testers`` (one entry a task that became
        claimable), the longest-waiting claim that can take each task, oldest first; with
        None, every one (a task without a tester, or we stop). A woken claim that fills all
        its slots wakes the next (``claim_waiting``), so no task waits for a timeout."""
        wanted = None if testers is None else list(testers)
        if wanted is not None and None in wanted:
            wanted = None  # a task without a tester: any claimer may want it
        keep: list[tuple[frozenset[str], asyncio.Future[None]]] = []
        for entry in self._work_waiters:
            names, waiter = entry
            match = None if wanted is None else next(
                (t for t in wanted if t in names), None)
            if wanted is None or match is not None:
                if wanted is not None:
                    wanted.remove(match)
                if not waiter.done():
                    waiter.set_result(None)
            else:
                keep.append(entry)
        self._work_waiters = keep

    def _wake_next(self, testers: frozenset[str]) -> None:
        """Wake the longest-waiting claim that runs any of ``testers``."""
        for entry in self._work_waiters:
            if not entry[0].isdisjoint(testers):
                self._work_waiters.remove(entry)
                if not entry[1].done():
                    entry[1].set_result(None)
                return

    def set_lease_key(self, key: bytes) -> None:
        self._lease_key = key

    def lease_of(self, task: Task) -> str:
        """The secret a claim hands out with ``task``; heartbeat and finish must present it."""
        return lease_secret(self._lease_key, task.id, task.claims, task.owner or "")

    def _lease_ok(self, task: Task, consumer_id: str, lease: str) -> bool:
        return (task.owner == consumer_id and bool(self._lease_key)
                and lease_matches(self._lease_key, task.id, task.claims, consumer_id, lease))

    @property
    def long_polls_waiting(self) -> int:
        return len(self._work_waiters)

    def long_poll_free(self) -> bool:
        """Whether one more claim may wait for work (the rest answer at once)."""
        return len(self._work_waiters) < self._max_long_polls

    async def load_holdings(self) -> None:
        """Count each owner's processing tasks, for the per-consumer claim cap."""
        self._held = collections.Counter(
            t.owner or "" for t in await self._repo.tasks_by_status(TaskStatus.PROCESSING))

    # ------------------------------------------------------------------ submit
    async def submit(self, items: Sequence[NewTask]) -> list[SubmitResult]:
        """Create the tasks that do not exist yet; return each item's task and whether it
        was created. The same pair twice (in one call or across calls) gives one task.

        Concurrent calls are coalesced: the caller that gets the lock looks up and inserts
        everything queued so far in one round trip each, so single submits are not bound by
        one INSERT's commit latency each."""
        future: asyncio.Future[list[SubmitResult]] = asyncio.get_running_loop().create_future()
        self._submit_queue.append((list(items), future))
        async with self._lock:
            if not future.done():
                queued, self._submit_queue = self._submit_queue, []
                await self._submit_queued(queued)
        return await future

    async def submit_each(self, items: Sequence[NewTask]) -> list[SubmitResult | ValidationError]:
        """Like :meth:`submit`, but an item whose own values cannot be stored is answered
        with its error and the others are created all the same."""
        try:
            return list(await self.submit(items))
        except Exception as exc:
            if len(items) == 1 or _item_error(exc) is None:
                raise
        answers = await asyncio.gather(*[self.submit([item]) for item in items],
                                       return_exceptions=True)
        out: list[SubmitResult | ValidationError] = []
        for answer in answers:
            if isinstance(answer, BaseException):
                error = _item_error(answer)
                if error is None:
                    raise answer
                out.append(error)
            else:
                out.append(answer[0])
        return out

    async def _submit_queued(
            self, queued: list[tuple[list[NewTask], asyncio.Future[list[SubmitResult]]]]
    ) -> None:
        try:
            results = await self._submit_locked([item for items, _ in queued for item in items])
        except Exception as exc:
            if len(queued) == 1 or _item_error(exc) is None:
                for _, waiting in queued:
                    if not waiting.done():
                        waiting.set_exception(_item_error(exc) or exc)
                return
            # One caller's item cannot be stored: each caller on its own, so it fails alone.
            for group in queued:
                await self._submit_queued([group])
            return
        created = [item.tester for item, result in
                   zip((i for items, _ in queued for i in items), results, strict=True)
                   if result.created]
        if created:
            self.wake_claimers(created)
        offset = 0
        for items, waiting in queued:
            if not waiting.done():
                waiting.set_result(results[offset:offset + len(items)])
            offset += len(items)

    async def _submit_locked(self, items: Sequence[NewTask]) -> list[SubmitResult]:
        known = await self._repo.tasks_by_ids([ids.task_id(i.bad_job_id, i.error_id)
                                               for i in items])
        occupied: dict[int, tuple[str, str]] = {
            tid: (t.bad_job_id, t.error_id) for tid, t in known.items()}
        by_pair: dict[tuple[str, str], SubmitResult] = {}
        # Rows about the same jobs that others wrote (compass-ci's bisect service: random
        # ids, no error key) are the same task: never create a second one beside them.
        for task in await self._repo.tasks_of_bad_jobs([i.bad_job_id for i in items]):
            by_pair.setdefault((task.bad_job_id, task.error_id),
                               SubmitResult(task, created=False))
        rows: list[dict[str, Any]] = []
        results: list[SubmitResult | tuple[str, str]] = []
        now_s, now_ms = int(self._clock()), self._now_ms()
        for item in items:
            pair = (item.bad_job_id, item.error_id)
            if pair in by_pair:
                results.append(pair)
                continue
            task_id = await self._free_or_own_id(pair, occupied, known)
            if task_id in known and (known[task_id].bad_job_id,
                                     known[task_id].error_id) == pair:
                by_pair[pair] = SubmitResult(known[task_id], created=False)
            else:
                row = new_task_row(task_id, item, now_s, now_ms)
                rows.append(row)
                occupied[task_id] = pair
                by_pair[pair] = SubmitResult(task_from_row(row), created=True)
            results.append(pair)
        if rows:
            await self._insert(rows, by_pair)
        out: list[SubmitResult] = []
        seen: set[tuple[str, str]] = set()
        for entry in results:
            assert isinstance(entry, tuple)
            result = by_pair[entry]
            # A pair repeated inside one request is "existing" from its second mention on.
            out.append(result if entry not in seen else SubmitResult(result.task, False))
            seen.add(entry)
        return out

    async def _free_or_own_id(self, pair: tuple[str, str], occupied: dict[int, tuple[str, str]],
                              known: dict[int, Task]) -> int:
        """Follow the probe sequence until an id that is free or holds this very pair."""
        for probe in range(ids.MAX_PROBES):
            task_id = ids.task_id(*pair, probe=probe)
            if probe > 0 and task_id not in occupied:
                stored = await self._repo.get_task(task_id)
                if stored is not None:
                    known[task_id] = stored
                    occupied[task_id] = (stored.bad_job_id, stored.error_id)
            holder = occupied.get(task_id)
            if holder is None or holder == pair:
                if probe > 0:
                    log.warning("task_id_collision", bad_job_id=pair[0], probe=probe)
                return task_id
        raise ProducerError(f"no free task id for {pair!r} after {ids.MAX_PROBES} probes")

    async def _insert(self, rows: list[dict[str, Any]],
                      by_pair: dict[tuple[str, str], SubmitResult]) -> None:
        try:
            await self._repo.insert_tasks(rows)
            return
        except pymysql.err.MySQLError as exc:
            if not _is_duplicate(exc):
                raise
        # A retried insert whose first reply was lost, or rows of an earlier writer: insert
        # one by one and take what is stored where the id is taken.
        for row in rows:
            try:
                await self._repo.insert_tasks([row])
            except pymysql.err.MySQLError as exc:
                if not _is_duplicate(exc):
                    raise
                stored = await self._repo.get_task(row["id"])
                if stored is not None:
                    by_pair[(stored.bad_job_id, stored.error_id)] = SubmitResult(stored, False)

    # ------------------------------------------------------------------ user actions
    async def _require(self, task_id: int) -> Task:
        task = await self._repo.get_task(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        return task

    async def retry(self, task_id: int, *, fresh: bool = False) -> Task:
        """Put a failed or cancelled task back to waiting; attempts are kept. ``fresh``:
        its next bisection reuses no stored verdict (every commit is tested again)."""
        async with self._lock:
            task = await self._require(task_id)
            if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
                raise InvalidTransition(f"task is {task.status.value}; only failed or "
                                        "cancelled tasks can be retried")
            if fresh != bool(task.extra.get(FRESH_RUNS)):
                await self._repo.set_task_extra(task_id, {**task.extra, FRESH_RUNS: fresh})
            await self._repo.mark_requeued(task_id, attempts=task.attempts,
                                           retry_count=task.retry_count + 1,
                                           last_error=task.last_error)
            log.info("task_retried", task_id=task_id, fresh=fresh)
            self.wake_claimers()
            return await self._require(task_id)

    async def cancel(self, task_id: int, reason: str = "cancelled by user") -> Task:
        """A waiting task is cancelled at once; a running one is marked, and its consumer is
        told to stop at its next heartbeat."""
        async with self._lock:
            task = await self._require(task_id)
            if task.status is TaskStatus.WAIT:
                await self._repo.mark_cancelled(task_id, reason)
            elif task.status is TaskStatus.PROCESSING:
                await self._repo.mark_cancel_requested(task_id)
            else:
                raise InvalidTransition(f"task is {task.status.value}; nothing to cancel")
            log.info("task_cancel_requested", task_id=task_id, status=task.status.value)
            return await self._require(task_id)

    async def delete_failed(self) -> int:
        async with self._lock:
            task_ids = await self._repo.task_ids_by_status(TaskStatus.FAILED)
            await self._repo.delete_tasks(task_ids)
            log.info("failed_tasks_deleted", count=len(task_ids))
            return len(task_ids)

    # ------------------------------------------------------------------ consumers
    async def claim(self, consumer_id: str, slots: int, testers: Sequence[str]) -> list[Task]:
        """Give up to ``slots`` waiting tasks to ``consumer_id``: highest priority, then
        oldest. Serialized, so a task is never handed to two consumers. A consumer holds at
        most ``max_claims_per_consumer`` tasks at once (422 naming ``slots`` beyond)."""
        async with self._lock:
            free = self._max_claims - self._held[consumer_id]
            if slots > 0 and free <= 0:
                raise ValidationError("slots", f"consumer {consumer_id} already holds "
                                               f"{self._held[consumer_id]} tasks, the most one "
                                               "consumer may hold (BISECT_MAX_CLAIMS_PER_CONSUMER)")
            slots = min(slots, free)
            if slots <= 0:
                return []
            # compass-ci's own rows name no tester: the default tester runs them.
            names = [*testers, ""] if self._default_tester in testers else list(testers)
            tasks = await self._claimable(names, slots)
            now = self._now_ms()
            claimed = []
            for task in tasks:
                lease = now + self._lease_ms
                await self._repo.mark_claimed(task.id, consumer_id, lease, task.claims + 1,
                                              int(self._clock()))
                claimed.append(dataclasses.replace(
                    task, status=TaskStatus.PROCESSING, owner=consumer_id,
                    lease_expires_ms=lease, claims=task.claims + 1,
                    start_time=int(self._clock()), cancel_requested=False))
                self._held[consumer_id] += 1
                log.info("task_claimed", task_id=task.id, consumer_id=consumer_id,
                         claim=task.claims + 1)
            return claimed

    async def _claimable(self, testers: Sequence[str], slots: int) -> list[Task]:
        """Waiting tasks for ``testers``; rows another service wrote are completed from
        their bad job first, or failed with the reason when they can never run."""
        ready: list[Task] = []
        for task in await self._repo.claimable_tasks(testers, slots):
            if task.status is not TaskStatus.WAIT:  # Manticore's '=' ignores case
                continue
            if needs_adoption(task):
                adopted = await adopt(self._repo, task, self._default_tester,
                                      self._repo_url_allow)
                if adopted.task is None:
                    await self._repo.mark_failed(task.id, attempts=task.attempts,
                                                 last_error=adopted.problem or "cannot run")
                    log.warning("task_not_runnable", task_id=task.id,
                                bad_job_id=task.bad_job_id, reason=adopted.problem)
                    continue
                task = adopted.task
                log.info("task_adopted", task_id=task.id, bad_job_id=task.bad_job_id,
                         git_url=task.git_url)
            ready.append(task)
        return ready

    async def claim_waiting(self, consumer_id: str, slots: int, testers: Sequence[str],
                            wait_s: float) -> list[Task]:
        """Like :meth:`claim`, but when nothing is waiting, wait up to ``wait_s`` for a task
        to become claimable (long poll): consumers start work at once without polling."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        names = frozenset(testers)
        while True:
            # Register before looking, so a submit between the look and the wait is not missed.
            waiter: asyncio.Future[None] = loop.create_future()
            entry = (names, waiter)
            self._work_waiters.append(entry)
            try:
                tasks = await self.claim(consumer_id, slots, testers)
                remaining = deadline - loop.time()
                if tasks and len(tasks) >= slots:
                    # All slots filled: more may be waiting for these testers; the next
                    # long poll looks (a wake-up per task, so this one may have taken others).
                    self._wake_next(names)
                if tasks or remaining <= 0 or self._closing:
                    return tasks
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                return []
            finally:
                if entry in self._work_waiters:
                    self._work_waiters.remove(entry)

    async def heartbeat(self, consumer_id: str, leases: Mapping[int, str]) -> HeartbeatAnswer:
        """Renew the leases whose secret matches; every other task is told to stop."""
        task_ids = list(leases)
        async with self._lock:
            try:
                tasks = await self._repo.tasks_by_ids(task_ids)
            except DatabaseUnavailable:
                self.grant_grace()
                raise
            renewed: list[int] = []
            stop: list[tuple[int, StopReason]] = []
            lease = self._now_ms() + self._lease_ms
            for task_id in task_ids:
                task = tasks.get(task_id)
                if task is None or not self._lease_ok(task, consumer_id, leases[task_id]):
                    stop.append((task_id, StopReason.LEASE_LOST))
                elif task.status is TaskStatus.CANCELLED or task.cancel_requested:
                    stop.append((task_id, StopReason.CANCELLED))
                elif task.status is not TaskStatus.PROCESSING:
                    stop.append((task_id, StopReason.LEASE_LOST))
                else:
                    renewed.append(task_id)
            if renewed:
                await self._repo.renew_leases(renewed, lease)
            for task_id, reason in stop:
                log.info("task_stop_requested", task_id=task_id, consumer_id=consumer_id,
                         reason=reason.value)
            return HeartbeatAnswer(renewed, stop)

    async def finish(self, consumer_id: str, task_id: int, outcome: FinishOutcome, *,
                     lease: str, reason: str | None = None,
                     result: dict[str, Any] | None = None) -> Task:
        """Record the end of a task ``consumer_id`` holds under ``lease`` (409 otherwise)."""
        async with self._lock:
            task = await self._require(task_id)
            if task.status is not TaskStatus.PROCESSING or not self._lease_ok(
                    task, consumer_id, lease):
                raise NotOwner(f"task {task_id} is {task.status.value} and not held by "
                               f"{consumer_id} under this lease; result not recorded")
            self._held[consumer_id] -= 1
            if task.cancel_requested and outcome is not FinishOutcome.COMPLETED:
                await self._repo.mark_cancelled(task_id, "cancelled by user")
            elif outcome is FinishOutcome.COMPLETED:
                result = result or {}
                extra = {**task.extra, "result": result}
                confidence = result.get("confidence")
                await self._repo.mark_completed(
                    task_id, bad_commit=result.get("bad_commit"),
                    first_bad_id=result.get("first_bad_id"),
                    first_result_root=result.get("first_result_root"),
                    work_dir=result.get("work_dir"),
                    confidence=float(confidence) if confidence is not None else None,
                    verification=result.get("verification"), extra=extra)
            elif outcome is FinishOutcome.FAILED:
                await self._repo.mark_failed(task_id, attempts=task.attempts,
                                             last_error=reason or "failed")
            else:
                await self._repo.mark_requeued(task_id, attempts=task.attempts,
                                               retry_count=task.retry_count,
                                               last_error=f"released: {reason or 'shutdown'}")
                self.wake_claimers([task.tester])
            log.info("task_finished", task_id=task_id, consumer_id=consumer_id,
                     outcome=outcome.value)
            return await self._require(task_id)

    async def sweep(self) -> SweepReport:
        """Return tasks whose lease expired to waiting (attempt counted) or fail them."""
        async with self._lock:
            now = self._now_ms()
            report = SweepReport([], [], [])
            processing = await self._repo.tasks_by_status(TaskStatus.PROCESSING)
            self._held = collections.Counter(t.owner or "" for t in processing)
            if now < self._grace_until_ms:
                return report
            for task in processing:
                if (task.lease_expires_ms or 0) >= now:
                    continue
                self._held[task.owner or ""] -= 1
                attempts = task.attempts + 1
                if task.cancel_requested:
                    await self._repo.mark_cancelled(task.id, "cancelled by user")
                    report.cancelled.append(task.id)
                elif attempts >= self._max_attempts * (task.retry_count + 1):
                    await self._repo.mark_failed(
                        task.id, attempts=attempts,
                        last_error=f"lease expired {attempts} times (last owner {task.owner})")
                    report.failed.append(task.id)
                else:
                    await self._repo.mark_requeued(
                        task.id, attempts=attempts, retry_count=task.retry_count,
                        last_error=f"lease expired (owner {task.owner})")
                    report.requeued.append(task.id)
                    self.wake_claimers([task.tester])
                log.warning("lease_expired", task_id=task.id, owner=task.owner,
                            attempts=attempts)
            return report
