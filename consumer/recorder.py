"""Turns the engine's events into the rows this consumer writes directly.

Steps, verdicts for reuse, live progress and the regression row of a found culprit each have
exactly one writer (the consumer that owns the task), so they are written as the events
arrive. A database outage must not end a bisection that is going well: a failed write is
logged and counted, and the bisection goes on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from common.errors import DatabaseUnavailable
from common.models import Culprit, Step, StoredVerdict, Verdict
from common.repository import MAX_POSTERIOR, Repository, now_ms, now_s
from consumer.health import Metrics

log = structlog.get_logger(__name__)

PROGRESS_MIN_INTERVAL_S = 0.25  # a flood of progress events is coalesced, the last one kept
MAX_DETAIL_CHARS = 2000
MAX_UNWRITTEN = 10_000  # rows kept for a retry while the database is away
FINAL_WRITE_RETRY_S = 120.0  # how long the end of a run waits for the database to come back


class InvalidEvent(ValueError):
    """An event line that parsed as JSON but does not have the documented shape."""


def _int(event: dict[str, Any], key: str, default: int | None = None) -> int:
    value = event.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent(f"{key} must be a number, got {value!r}")
    return int(value)


def _opt_str(event: dict[str, Any], key: str) -> str | None:
    value = event.get(key)
    if value is None or value == "":
        return None
    return str(value)


def _verdict(event: dict[str, Any]) -> Verdict:
    try:
        return Verdict(str(event.get("verdict")))
    except ValueError:
        raise InvalidEvent(f"verdict must be good, bad or skip, "
                           f"got {event.get('verdict')!r}") from None


def _commit(event: dict[str, Any]) -> str:
    commit = event.get("commit")
    if not isinstance(commit, str) or not commit:
        raise InvalidEvent("commit must be a non-empty string")
    return commit


@dataclass(frozen=True)
class RecorderScope:
    """Who and what the rows are about."""

    task_id: int
    attempt: int
    repo_url: str
    tester_fingerprint: str
    error_id: str
    bad_job_id: str


@dataclass
class Recorder:
    repo: Repository
    scope: RecorderScope
    metrics: Metrics | None = None
    result: dict[str, Any] | None = None
    steps: int = 0
    write_errors: int = 0
    _seen_verdicts: set[tuple[Any, ...]] = field(default_factory=set)
    _pending_progress: dict[str, int] | None = None
    _progress_at: float = 0.0
    _warned_fingerprint: bool = False
    # Step and verdict writes that failed because the database was away; every write is
    # idempotent (deterministic ids), so they are simply tried again later.
    _unwritten: list[tuple[str, Callable[[], Awaitable[None]]]] = field(default_factory=list)
    _last_unavailable: bool = False
    _last_step: Step | None = None

    def __post_init__(self) -> None:
        self.log = log.bind(task_id=self.scope.task_id, attempt=self.scope.attempt)

    async def handle(self, event: dict[str, Any]) -> None:
        """Record one event. Raises :class:`InvalidEvent` for a malformed one."""
        kind = event.get("event")
        if kind == "step":
            await self._step(event)
        elif kind == "verdict":
            await self._verdict(event)
        elif kind == "progress":
            await self._progress(event)
        elif kind == "testing":
            await self._testing(event)
        elif kind == "result":
            await self._result(event)
        elif kind in ("started", "range"):
            self.log.info(f"bisection_{kind}", **{k: v for k, v in event.items()
                                               if k != "event" and not isinstance(v, list)})
        elif not isinstance(kind, str):
            raise InvalidEvent("no event name")
        else:
            self.log.debug("engine_event_ignored", engine_event=kind)

    async def flush(self) -> None:
        """Write the progress a coalesced flood left pending, and retry rows that could not
        be written while the database was away."""
        if self._pending_progress is not None:
            pending, self._pending_progress = self._pending_progress, None
            await self._write_progress(pending)
        await self._retry_unwritten()

    @property
    def unwritten(self) -> int:
        return len(self._unwritten)

    async def _retry_unwritten(self) -> None:
        while self._unwritten:
            what, write = self._unwritten[0]
            try:
                await write()
            except DatabaseUnavailable:
                return
            except Exception as exc:
                self.log.error("record_failed", what=what, error=repr(exc)[:500])
            self._unwritten.pop(0)
            self.log.info("record_caught_up", what=what, left=len(self._unwritten))

    async def _keep_trying(self, what: str, write: Callable[[], Awaitable[None]]) -> bool:
        """Write now; when the database is away, keep the write for later (bounded)."""
        await self._retry_unwritten()
        if self._unwritten:  # still away: keep order, do not even try
            ok = False
        else:
            ok = await self._guard(what, write(), quiet_unavailable=True)
        if not ok and self._last_unavailable and len(self._unwritten) < MAX_UNWRITTEN:
            self._unwritten.append((what, write))
        return ok

    async def _guard(self, what: str, write: Any, *, quiet_unavailable: bool = False) -> bool:
        self._last_unavailable = False
        try:
            await write
        except DatabaseUnavailable as exc:
            self.write_errors += 1
            self._last_unavailable = True
            self.log.warning("record_deferred" if quiet_unavailable else "record_failed",
                             what=what, error=str(exc))
            return False
        except Exception as exc:  # e.g. a value the server refuses: skip the row, go on
            self.write_errors += 1
            self.log.error("record_failed", what=what, error=repr(exc)[:500])
            return False
        return True

    async def _step(self, event: dict[str, Any]) -> None:
        duration_s = event.get("duration_s") or 0
        if isinstance(duration_s, bool) or not isinstance(duration_s, int | float):
            raise InvalidEvent("duration_s must be a number")
        seq = _int(event, "seq")
        if seq < 0:
            raise InvalidEvent("seq must not be negative")
        duration_ms = int(max(0.0, float(duration_s)) * 1000)
        detail = _opt_str(event, "detail")
        step = Step(
            task_id=self.scope.task_id, attempt=self.scope.attempt, seq=seq,
            commit=_commit(event), verdict=_verdict(event),
            runs=_int(event, "runs", 1), bad_runs=_int(event, "bad_runs", 0),
            job_id=_opt_str(event, "job_id"), result_root=_opt_str(event, "result_root"),
            reused=bool(event.get("reused")),
            detail=detail[:MAX_DETAIL_CHARS] if detail else None,
            started_ms=now_ms() - duration_ms, duration_ms=duration_ms, created_at=now_s(),
            phase=(_opt_str(event, "phase") or "")[:64] or None)
        self._last_step = step
        self.steps += 1
        if self.metrics is not None and not step.reused:
            self.metrics.step_duration.observe(duration_ms / 1000)
        await self.flush()
        if await self._keep_trying("step", lambda: self.repo.record_step(step)):
            self.log.info("step_recorded", seq=step.seq, commit=step.commit,
                          verdict=step.verdict.value, runs=step.runs, reused=step.reused)

    async def _verdict(self, event: dict[str, Any]) -> None:
        fingerprint = _opt_str(event, "tester_fingerprint") or self.scope.tester_fingerprint
        if fingerprint != self.scope.tester_fingerprint and not self._warned_fingerprint:
            # Verdicts stored under another fingerprint are never found again by this
            # consumer's lookup: the two definitions have drifted apart.
            self._warned_fingerprint = True
            self.log.warning("fingerprint_mismatch", engine=fingerprint,
                             consumer=self.scope.tester_fingerprint)
        verdict = StoredVerdict(
            repo_url=self.scope.repo_url, commit=_commit(event),
            tester_fingerprint=fingerprint,
            error_id=_opt_str(event, "error_id") or self.scope.error_id,
            verdict=_verdict(event), runs=_int(event, "runs", 1),
            bad_runs=_int(event, "bad_runs", 0), job_id=_opt_str(event, "job_id"),
            result_root=_opt_str(event, "result_root"), task_id=self.scope.task_id,
            updated_at=now_s())
        key = (verdict.commit, verdict.tester_fingerprint, verdict.error_id,
               verdict.verdict, verdict.runs, verdict.bad_runs)
        if key in self._seen_verdicts:
            return
        self._seen_verdicts.add(key)
        if await self._keep_trying("verdict", lambda: self.repo.record_verdict(verdict)):
            self.log.info("verdict_recorded", commit=verdict.commit,
                          verdict=verdict.verdict.value)

    async def _testing(self, event: dict[str, Any]) -> None:
        """A test starts: the task row shows the commit under test and the phase."""
        commit = _commit(event)
        phase = _opt_str(event, "phase") or ""
        await self._guard("testing", self.repo.update_testing(
            self.scope.task_id, commit=commit, phase=phase[:64]))

    async def _posterior(self, event: dict[str, Any]) -> None:
        """A flaky search's culprit probabilities after the last step: kept on that step."""
        raw = event.get("posterior")
        if raw is None or self._last_step is None:
            return
        if not isinstance(raw, list):
            raise InvalidEvent("posterior must be a list of [commit, probability]")
        pairs = []
        for item in raw[:MAX_POSTERIOR]:
            if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                    or isinstance(item[1], bool) or not isinstance(item[1], int | float)):
                raise InvalidEvent("posterior must be a list of [commit, probability]")
            pairs.append((item[0], min(1.0, max(0.0, float(item[1])))))
        step = dataclasses.replace(self._last_step, posterior=tuple(pairs))
        self._last_step = step
        await self._keep_trying("step", lambda: self.repo.record_step(step))

    async def _progress(self, event: dict[str, Any]) -> None:
        await self._posterior(event)
        tested = _int(event, "tested", 0)
        left = _int(event, "est_steps_left", 0)
        progress = {"current_step": tested, "steps_estimate": tested + max(0, left),
                    "candidates_left": _int(event, "candidates_left", 0)}
        if time.monotonic() - self._progress_at < PROGRESS_MIN_INTERVAL_S:
            self._pending_progress = progress
            return
        self._pending_progress = None
        await self._write_progress(progress)

    async def _write_progress(self, progress: dict[str, int]) -> None:
        self._progress_at = time.monotonic()
        if await self._guard("progress", self.repo.update_progress(
                self.scope.task_id, **progress)):
            self.log.debug("progress_recorded", **progress)

    async def _result(self, event: dict[str, Any]) -> None:
        status = event.get("status")
        if not isinstance(status, str):
            raise InvalidEvent("result without a status")
        if status == "found" and not _opt_str(event, "first_bad_commit"):
            raise InvalidEvent("result found without a first_bad_commit")
        self.result = event
        await self.flush()
        self.log.info("engine_result", status=status,
                      first_bad_commit=event.get("first_bad_commit"))

    async def record_regression(self, git_url: str | None, *, compass_job: bool = False,
                                discovered: bool = False, category: str = "") -> None:
        """Record a found culprit: bisect-task's culprit row for (error id, repository), and,
        for a compass-ci job only, compass-ci's regression row for the error id (counted; a
        new row is whitelisted only for an error id discovered from compass-ci's jobs)."""
        if self.result is None or self.result.get("status") != "found" or not git_url:
            return
        culprit = Culprit(
            errid=self.scope.error_id, git_url=git_url,
            first_bad_commit=str(self.result["first_bad_commit"]),
            bisect_task_id=self.scope.task_id, bad_job_id=self.scope.bad_job_id or "",
            confidence=float(self.result.get("confidence") or 0.0), found_at=now_s())

        async def write() -> None:
            await self.repo.record_culprit(culprit)
            if compass_job:
                await self.repo.record_regression(
                    culprit.errid, bad_job_id=culprit.bad_job_id, category=category,
                    whitelist_new=discovered)

        # The culprit is the point of the whole run: wait a while for the database rather
        # than lose it, and catch up on the steps that could not be written meanwhile.
        deadline = time.monotonic() + FINAL_WRITE_RETRY_S
        delay = 0.5
        while True:
            await self.flush()
            if await self._guard("regression", write()):
                self.log.info("regression_recorded", errid=culprit.errid,
                              first_bad_commit=culprit.first_bad_commit,
                              compass_job=compass_job)
                return
            if not self._last_unavailable or time.monotonic() + delay > deadline:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
