"""The ``compass`` tester: reruns the bad CI job at another commit through compass-ci.

For each commit it first looks for a finished job with the bad job's parameters at that
commit (``Repository.finished_jobs_at_commit`` plus a comparison in Python; compass-ci users
pay for machine time) and reuses it. Otherwise it submits a copy of the bad job's ``j`` (less
what the scheduler strips and what describes the old run, the commit set at the key that
selected it, marked with ``bad_job_id``, with the account fields) to
``POST {scheduler_url}/scheduler/v1/jobs/submit`` (compass-ci.md §7.3), then reads the job's
row until compass-ci has written its final state: ``istage >= 9`` and ``idata_readiness >= 3``
(§2.2). Verdict: bad when the task's error id is among the job's error ids; skip when its data
is ``incomplete``/``norun`` or its health is cancel, abort_* or timeout_*; good otherwise.
Connection errors and 5xx answers are retried with backoff; a 4xx answer skips the commit
with the scheduler's message, except an account the scheduler does not accept, which ends the
bisection; a job that does not finish within the profile's ``timeout`` is a skip. The
account's token never reaches a log line.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from common.compass_job import CompassJob
from common.db import Database
from common.errors import ValidationError
from common.repository import Repository
from common.settings import DbUrl
from consumer.engine.errors import TesterError
from consumer.engine.tester_types import TesterContext
from consumer.engine.verdicts import Outcome, Verdict

log = structlog.get_logger(__name__)

# By hand (bisect-run), the account may come from the environment; the consumer passes it in
# the spec's tester profile and gives the engine no secret in its environment.
ACCOUNT_ENV = {"my_account": "BISECT_COMPASS_ACCOUNT", "my_email": "BISECT_COMPASS_EMAIL",
               "my_name": "BISECT_COMPASS_NAME", "my_token": "BISECT_COMPASS_TOKEN"}
SUBMIT_PATH = "/scheduler/v1/jobs/submit"
DEFAULT_JOB_TIMEOUT_S = 4 * 3600.0
DEFAULT_POLL_INTERVAL_S = 15.0
DEFAULT_SUBMIT_ATTEMPTS = 5
DEFAULT_RETRY_DELAY_S = 2.0
HTTP_TIMEOUT_S = 60.0
# Answers that say the account itself is refused: every commit would fail the same way.
ACCOUNT_REFUSED = frozenset({401, 403, 404})


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = DEFAULT_SUBMIT_ATTEMPTS
    base_delay: float = DEFAULT_RETRY_DELAY_S
    factor: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.1

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        raw = min(self.max_delay, self.base_delay * self.factor ** (attempt - 1))
        return raw * (1.0 + random.uniform(-self.jitter, self.jitter))


@dataclass(frozen=True)
class CompassProfile:
    scheduler_url: str
    account: Mapping[str, str]  # my_account, my_email, my_name, my_token
    timeout: float = DEFAULT_JOB_TIMEOUT_S
    poll_interval: float = DEFAULT_POLL_INTERVAL_S
    retry: RetryPolicy = RetryPolicy()

    def __repr__(self) -> str:  # the token must not end up in a log line or traceback
        return (f"CompassProfile(scheduler_url={self.scheduler_url!r}, "
                f"my_account={self.account.get('my_account', '')!r})")

    @classmethod
    def from_mapping(cls, profile: Mapping[str, Any], context: TesterContext) -> CompassProfile:
        url = profile.get("scheduler_url") or context.scheduler_url
        if not isinstance(url, str) or not url.strip():
            raise ValidationError("scheduler_url", "the compass tester needs the scheduler URL "
                                  "(spec scheduler_url or tester.scheduler_url)")
        return cls(
            scheduler_url=url.strip().rstrip("/"),
            account={key: str(profile.get(key) or os.environ.get(env, ""))
                     for key, env in ACCOUNT_ENV.items()},
            timeout=_positive(profile, "timeout", DEFAULT_JOB_TIMEOUT_S),
            poll_interval=_positive(profile, "poll_interval", DEFAULT_POLL_INTERVAL_S),
            retry=RetryPolicy(
                max_attempts=int(_positive(profile, "submit_attempts", DEFAULT_SUBMIT_ATTEMPTS)),
                base_delay=_positive(profile, "retry_delay", DEFAULT_RETRY_DELAY_S),
            ),
        )


def _positive(profile: Mapping[str, Any], key: str, default: float) -> float:
    value = profile.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValidationError(f"tester.{key}", "must be a positive number")
    return float(value)


class SubmitRejected(Exception):
    """The scheduler refused the job (4xx): a problem of this commit's job, not transient."""


def same_parameters(bad: CompassJob, other: CompassJob) -> bool:
    """Whether ``other`` ran what the bad job ran (its commit aside)."""
    return bad.params_without_commit() == other.params_without_commit()


def judge(job: CompassJob, error_id: str | None) -> tuple[Verdict, str]:
    """The verdict a settled job gives on its commit."""
    reason = job.no_verdict_reason
    if reason is not None:
        return Verdict.SKIP, reason
    if error_id is None:
        if job.health_name == "success":
            return Verdict.GOOD, f"job {job.id} healthy"
        return Verdict.BAD, f"job {job.id} health {job.health_name}"
    if error_id in job.errids:
        return Verdict.BAD, f"job {job.id} shows {error_id}"
    others = f"; other error ids: {', '.join(job.errids[:5])}" if job.errids else ""
    return Verdict.GOOD, (f"job {job.id} finished without {error_id} "
                          f"(health {job.health_name}{others})")


class CompassTester:
    """Tests a commit by a compass-ci job at that commit (reused or submitted)."""

    needs_worktree = False

    def __init__(
        self,
        profile: CompassProfile,
        context: TesterContext,
        *,
        repository: Repository | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if not context.bad_job_id:
            raise ValidationError("bad_job_id", "the compass tester reruns the bad job: "
                                  "the spec needs bad_job_id")
        if repository is None and not context.db_url:
            raise ValidationError("db_url", "the compass tester reads the jobs table: "
                                  "the spec needs db_url")
        self.profile = profile
        self.context = context
        self._repo = repository
        self._db: Database | None = None
        self._session = session
        self._owns_session = session is None
        self._bad: CompassJob | None = None
        self._used: set[int] = set()  # jobs already counted: a rerun must be a new job
        self.log = log.bind(task_id=context.task_id, bad_job_id=context.bad_job_id)

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any], context: TesterContext) -> CompassTester:
        return cls(CompassProfile.from_mapping(profile, context), context)

    async def aclose(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    def _repository(self) -> Repository:
        if self._repo is None:
            assert self.context.db_url is not None
            self._db = Database(DbUrl.parse(self.context.db_url, "db_url"), maxsize=2)
            self._repo = Repository(self._db)
        return self._repo

    async def _bad_job(self) -> CompassJob:
        if self._bad is None:
            bad_id = self.context.bad_job_id or ""
            job = await self._repository().get_job(int(bad_id)) if bad_id.isdigit() else None
            if job is None:
                raise TesterError(f"bad job {bad_id} is not in the jobs table")
            if job.source is None:
                raise TesterError(f"bad job {bad_id} names no repository to rerun at "
                                  "another commit")
            self._bad = job
            self._used.add(job.id)
        return self._bad

    async def test(self, commit: str, worktree: Path) -> Outcome:
        started = time.monotonic()
        bad = await self._bad_job()
        existing = await self._reusable(bad, commit)
        if existing is not None:
            self._used.add(existing.id)
            self.log.info("compass_job_reused", commit=commit, job_id=existing.id)
            return self._outcome(existing, started, reused=True)
        try:
            job_id, result_root = await self._submit(bad, commit)
        except SubmitRejected as exc:
            return Outcome(verdict=Verdict.SKIP, duration_s=time.monotonic() - started,
                           detail=f"scheduler refused the job: {exc}")
        self._used.add(job_id)
        self.log.info("compass_job_submitted", commit=commit, job_id=job_id)
        job = await self._wait(job_id)
        if job is None:
            return Outcome(verdict=Verdict.SKIP, duration_s=round(time.monotonic() - started, 3),
                           job_id=str(job_id), result_root=result_root,
                           detail=f"job {job_id} did not finish within "
                                  f"{self.profile.timeout:g} s")
        return self._outcome(job, started, reused=False, result_root=result_root)

    async def _reusable(self, bad: CompassJob, commit: str) -> CompassJob | None:
        source = bad.source
        if not bad.suite or source is None:
            return None
        for job in await self._repository().finished_jobs_at_commit(bad.suite, source, commit):
            if job.id not in self._used and job.result_trusted and same_parameters(bad, job):
                return job
        return None

    def _outcome(self, job: CompassJob, started: float, *, reused: bool,
                 result_root: str | None = None) -> Outcome:
        verdict, detail = judge(job, self.context.error_id)
        root = job.result_root or result_root
        return Outcome(
            verdict=verdict,
            runs=0 if verdict is Verdict.SKIP else 1,
            bad_runs=1 if verdict is Verdict.BAD else 0,
            errids_seen=frozenset(job.errids),
            duration_s=round(time.monotonic() - started, 3),
            job_id=str(job.id),
            result_root=str(root) if root else None,
            detail=detail + (" (existing job reused)" if reused else ""),
            reused=reused,
        )

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))
        return self._session

    async def _submit(self, bad: CompassJob, commit: str) -> tuple[int, str | None]:
        """Submit the rerun; the new job's id and result_root. Retries transient failures."""
        url = self.profile.scheduler_url + SUBMIT_PATH
        body = bad.rerun_document(commit, self.profile.account)
        policy = self.profile.retry
        last = ""
        for attempt in range(1, policy.max_attempts + 1):
            try:
                async with self._http().post(url, json=body) as response:
                    text = await response.text()
                    if response.status in ACCOUNT_REFUSED:
                        raise TesterError(f"scheduler refused account "
                                          f"{self.profile.account.get('my_account')!r}: HTTP "
                                          f"{response.status}: {_message(text)}")
                    if 400 <= response.status < 500:
                        raise SubmitRejected(f"HTTP {response.status}: {_message(text)}")
                    if response.status < 300:
                        return _parse_answer(text)
                    last = f"HTTP {response.status}: {_message(text)}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            self.log.warning("compass_submit_retry", commit=commit, attempt=attempt, error=last)
            if attempt < policy.max_attempts:
                await asyncio.sleep(policy.delay(attempt))
        raise TesterError(f"scheduler {self.profile.scheduler_url} failed "
                          f"{policy.max_attempts} times: {last}")

    async def _wait(self, job_id: int) -> CompassJob | None:
        """Read the job's row until compass-ci wrote its final state (finished or ended,
        data settled); None when that does not happen in time."""
        deadline = time.monotonic() + self.profile.timeout
        while True:
            job = await self._repository().get_job(job_id)
            if job is not None and job.data_settled:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                self.log.warning("compass_job_timeout", job_id=job_id,
                                 stage=job.stage_name if job else None)
                return None
            await asyncio.sleep(min(self.profile.poll_interval, left))


def _message(text: str) -> str:
    """The scheduler's message from its answer shapes (§7.3): a JSON array of
    ``{"job_id", "message"}``, an object with ``message``, or plain text."""
    try:
        answer = json.loads(text)
    except json.JSONDecodeError:
        return text[:300]
    if isinstance(answer, list) and answer and isinstance(answer[0], dict):
        answer = answer[0]
    if isinstance(answer, dict) and answer.get("message"):
        message = str(answer["message"]).splitlines()[0]
        code = answer.get("errcode")
        return (f"{message} ({code})" if code else message)[:300]
    return text[:300]


def _parse_answer(text: str) -> tuple[int, str | None]:
    """The job id and result_root of a successful submit: a JSON array with one element per
    created job (the first is the job itself; the others are builds it waits on)."""
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TesterError(f"scheduler answer is not JSON: {text[:200]!r}") from exc
    first = answer[0] if isinstance(answer, list) and answer else answer
    raw = first.get("job_id") if isinstance(first, dict) else None
    try:
        job_id = int(str(raw))
    except ValueError:
        raise TesterError(f"scheduler answer has no job id: {text[:200]!r}") from None
    if job_id <= 0:
        raise TesterError(f"scheduler did not create the job: {_message(text)}")
    root = first.get("result_root")
    return job_id, str(root) if root else None
