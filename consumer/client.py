"""The producer's internal API as the consumer sees it (docs/consumer-protocol.md).

Connection errors and 5xx answers are retried with backoff inside each call; a call that
still fails raises :class:`ProducerUnavailable` and the caller's loop decides what next.
A claim is retried only when the request cannot have reached the producer (connect
errors) or the producer said it failed (5xx): a timeout after sending could mean tasks
were handed out, and claiming again would take more than the free slots.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from common.errors import BisectError
from common.models import FinishOutcome
from common.supervise import RetryPolicy

log = structlog.get_logger(__name__)

CLAIM_PATH = "/api/v1/internal/claim"
HEARTBEAT_PATH = "/api/v1/internal/heartbeat"
FINISH_PATH = "/api/v1/internal/finish"
DEFAULT_RETRY = RetryPolicy(base_s=0.2, cap_s=5.0, max_attempts=4)


class ProducerError(BisectError):
    """Base of the consumer's errors talking to the producer."""


class ProducerUnavailable(ProducerError):
    """The producer could not be reached, or kept answering 5xx."""


class ProducerRejected(ProducerError):
    """The producer refused the request (4xx other than a lease conflict)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"producer answered {status}: {message}")
        self.status = status


class ProducerProtocolError(ProducerError):
    """The producer's answer does not have the documented shape."""


@dataclass(frozen=True)
class ClaimedTask:
    """A task as a claim hands it out; ``claim`` is the attempt number of its step rows."""

    id: int
    claim: int
    bad_job_id: str
    error_id: str
    git_url: str | None = None
    known_bad_commit: str | None = None
    good_commit: str | None = None
    tester: str | None = None
    timeout: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The claim's secret, presented with every heartbeat and finish of this task. Kept out of
    # repr so no log line or traceback ever shows it.
    lease: str = field(default="", repr=False)

    @classmethod
    def from_json(cls, data: Any) -> ClaimedTask:
        if not isinstance(data, dict):
            raise ProducerProtocolError("a claimed task is not an object")
        try:
            task_id = int(data["id"])
            claim = int(data.get("claim") or 1)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProducerProtocolError(f"claimed task without a valid id/claim: {exc}") from None

        def text(key: str) -> str | None:
            value = data.get(key)
            return str(value) if value not in (None, "") else None

        timeout = data.get("timeout")
        extra = data.get("extra")
        lease = data.get("lease")
        if not isinstance(lease, str) or not lease:
            raise ProducerProtocolError(f"claimed task {task_id} without a lease secret")
        return cls(
            id=task_id, claim=claim,
            bad_job_id=str(data.get("bad_job_id") or ""),
            error_id=str(data.get("error_id") or ""),
            git_url=text("git_url"),
            known_bad_commit=text("known_bad_commit"),
            good_commit=text("good_commit"),
            tester=text("tester"),
            timeout=int(timeout) if isinstance(timeout, int | float) and timeout > 0 else None,
            extra=extra if isinstance(extra, dict) else {},
            lease=lease,
        )


@dataclass(frozen=True)
class ClaimAnswer:
    tasks: list[ClaimedTask]
    lease_seconds: float
    long_poll: bool = False  # the producer waited for work before answering empty


@dataclass(frozen=True)
class StopOrder:
    task_id: int
    reason: str


@dataclass(frozen=True)
class HeartbeatAnswer:
    renewed: list[int]
    stop: list[StopOrder]
    lease_seconds: float


@dataclass(frozen=True)
class FinishAnswer:
    """``accepted`` False: 409, the consumer no longer owns the task; nothing was recorded."""

    accepted: bool
    status: str | None = None


def _lease(data: dict[str, Any], default: float) -> float:
    value = data.get("lease_seconds")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return default


class ProducerClient:
    """Typed calls of the three internal routes over one ``aiohttp.ClientSession``."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, consumer_id: str, *,
                 token: str = "", retry: RetryPolicy = DEFAULT_RETRY,
                 default_lease_s: float = 30.0) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self.consumer_id = consumer_id
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._retry = retry
        self._default_lease = default_lease_s
        self.last_ok: float | None = None  # time.monotonic() of the last good answer
        self.last_error: str | None = None

    async def _post(self, path: str, body: dict[str, Any], *, safe_retry: bool = True,
                    attempts: int | None = None,
                    ok_statuses: tuple[int, ...] = (200,)) -> tuple[int, dict[str, Any]]:
        """POST with retries; returns (status, JSON body) for an ``ok_statuses`` answer."""
        limit = attempts if attempts is not None else max(1, self._retry.max_attempts)
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._session.post(self._base + path, json=body,
                                              headers=self._headers) as response:
                    if response.status in ok_statuses:
                        data = await response.json(content_type=None)
                        if not isinstance(data, dict):
                            raise ProducerProtocolError(f"{path}: answer is not an object")
                        self.last_ok = time.monotonic()
                        self.last_error = None
                        return response.status, data
                    text = (await response.text())[:500]
                    if response.status < 500:
                        self.last_ok = time.monotonic()
                        raise ProducerRejected(response.status, text)
                    error = f"{path}: HTTP {response.status}: {text}"
            except aiohttp.ClientConnectorError as exc:
                error = f"{path}: cannot connect: {exc}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"{path}: {type(exc).__name__}: {exc}"
                if not safe_retry:
                    self.last_error = error
                    raise ProducerUnavailable(error) from exc
            except ValueError as exc:  # a 200 whose body is not JSON
                raise ProducerProtocolError(f"{path}: answer is not JSON ({exc})") from exc
            self.last_error = error
            if attempt >= limit:
                raise ProducerUnavailable(error)
            delay = self._retry.delay(attempt)
            log.warning("producer_retry", path=path, attempt=attempt, error=error,
                        delay_s=round(delay, 2))
            await asyncio.sleep(delay)

    async def claim(self, slots: int, testers: list[str], wait_s: float = 0.0) -> ClaimAnswer:
        """Ask for at most ``slots`` tasks this consumer's testers can run; with ``wait_s``
        the producer holds the request up to that long when nothing is waiting."""
        body: dict[str, Any] = {"consumer_id": self.consumer_id, "slots": slots,
                                "testers": testers}
        if wait_s > 0:
            body["wait_s"] = round(wait_s, 3)
        _, data = await self._post(CLAIM_PATH, body, safe_retry=False)
        raw = data.get("tasks") or []
        if not isinstance(raw, list):
            raise ProducerProtocolError("claim: tasks is not a list")
        return ClaimAnswer([ClaimedTask.from_json(item) for item in raw],
                           _lease(data, self._default_lease),
                           long_poll=wait_s > 0 and data.get("long_poll") is True)

    async def heartbeat(self, leases: Mapping[int, str]) -> HeartbeatAnswer:
        """Renew the leases of the tasks in ``leases`` (task id: the claim's lease secret);
        the answer lists tasks to stop at once."""
        _, data = await self._post(HEARTBEAT_PATH, {
            "consumer_id": self.consumer_id,
            "leases": {str(task_id): lease for task_id, lease in leases.items()}})
        stops: list[StopOrder] = []
        for item in data.get("stop") or []:
            try:
                stops.append(StopOrder(int(item["task_id"]), str(item.get("reason") or "")))
            except (KeyError, TypeError, ValueError):
                log.warning("heartbeat_bad_stop", item=repr(item)[:200])
        renewed = []
        for value in data.get("renewed") or []:
            try:
                renewed.append(int(value))
            except (TypeError, ValueError):
                continue
        return HeartbeatAnswer(renewed, stops, _lease(data, self._default_lease))

    async def finish(self, task_id: int, outcome: FinishOutcome, *, lease: str,
                     reason: str = "", result: dict[str, Any] | None = None,
                     give_up_after_s: float = 300.0) -> FinishAnswer:
        """Report the end of a task held under ``lease`` (its claim's secret); retried (it is
        idempotent) for up to ``give_up_after_s``."""
        body: dict[str, Any] = {"consumer_id": self.consumer_id, "task_id": str(task_id),
                                "lease": lease, "outcome": outcome.value, "reason": reason,
                                "result": result or {}}
        deadline = time.monotonic() + give_up_after_s
        round_ = 0
        while True:
            round_ += 1
            try:
                status, data = await self._post(FINISH_PATH, body, ok_statuses=(200, 409))
            except ProducerUnavailable:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(min(self._retry.delay(round_ + 2),
                                        max(0.0, deadline - time.monotonic())))
                continue
            if status == 409:
                return FinishAnswer(accepted=False)
            return FinishAnswer(accepted=True, status=str(data.get("status") or "") or None)

    async def probe(self) -> None:
        """One unretried request to the producer's ``/healthz``; raises when unreachable."""
        try:
            async with self._session.get(self._base + "/healthz",
                                         headers=self._headers) as response:
                await response.read()
                if response.status >= 500:
                    raise ProducerUnavailable(f"/healthz: HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProducerUnavailable(f"/healthz: {type(exc).__name__}: {exc}") from exc
        self.last_ok = time.monotonic()
