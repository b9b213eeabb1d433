"""Records the services pass around. Absent values are ``None`` here; the repository turns
them into ``''``/0 for the database and back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class TaskStatus(StrEnum):
    """compass-ci's four statuses, the only ones bisect-task writes (a cancel is ``failed``
    with ``end_reason = cancelled``). ``CANCELLED`` is read from rows older versions wrote.
    Any other value (another service sharing the table, e.g. a newer compass-ci's
    ``verifying``) reads as a status of its own, shown as it is and never claimed."""

    WAIT = "wait"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def _missing_(cls, value: object) -> TaskStatus | None:
        if not isinstance(value, str):
            return None
        # A pseudo-member: compares, prints and serializes as the stored text.
        member = str.__new__(cls, value)
        member._name_ = value.upper()
        member._value_ = value
        return member

    @property
    def known(self) -> bool:
        return self.value in _KNOWN_STATUSES

    @property
    def is_final(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


_KNOWN_STATUSES = frozenset(member.value for member in TaskStatus)


class EndReason(StrEnum):
    """Why a task ended, beside compass-ci's status (column ``end_reason``)."""

    NONE = ""
    CANCELLED = "cancelled"


class FinishOutcome(StrEnum):
    """How a consumer reports the end of a task it holds (docs/consumer-protocol.md)."""

    COMPLETED = "completed"
    FAILED = "failed"
    RELEASED = "released"  # back to waiting, no attempt counted


class StopReason(StrEnum):
    """Why the producer tells a consumer to stop a task."""

    CANCELLED = "cancelled"
    LEASE_LOST = "lease_lost"


class Verdict(StrEnum):
    GOOD = "good"
    BAD = "bad"
    SKIP = "skip"


@dataclass(frozen=True)
class Task:
    id: int
    bad_job_id: str
    error_id: str
    status: TaskStatus
    priority: int = 0
    git_url: str | None = None
    project: str | None = None
    suite: str | None = None
    name: str | None = None
    tester: str | None = None
    source: str | None = None
    known_bad_commit: str | None = None
    good_commit: str | None = None
    group_key: str | None = None
    timeout: int | None = None
    owner: str | None = None
    lease_expires_ms: int | None = None
    claims: int = 0
    attempts: int = 0
    retry_count: int = 0
    cancel_requested: bool = False
    queued_ms: int = 0
    created_at: int = 0
    updated_at: int = 0
    start_time: int | None = None
    end_time: int | None = None
    # Results, in compass-ci's names: bad_commit is the first bad commit found.
    bad_commit: str | None = None
    first_bad_id: str | None = None
    first_result_root: str | None = None
    work_dir: str | None = None
    last_error: str | None = None
    confidence: float | None = None
    verification: str | None = None
    current_step: int = 0
    steps_estimate: int = 0
    candidates_left: int = 0
    progress_ms: int = 0
    end_reason: str = ""
    # What the engine is doing now (while processing): the commit under test and the phase
    # (find_good, search, verify, check_head, ...).
    current_commit: str | None = None
    phase: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cancelled(self) -> bool:
        return self.status is TaskStatus.CANCELLED or self.end_reason == EndReason.CANCELLED

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["id"] = str(self.id)  # 63-bit ids lose precision as JSON numbers in browsers
        return data


@dataclass(frozen=True)
class NewTask:
    """What a submission (API or discovery) asks the writer to create."""

    bad_job_id: str
    error_id: str
    priority: int = 0
    git_url: str | None = None
    project: str | None = None
    suite: str | None = None
    tester: str | None = None
    source: str = "api"
    known_bad_commit: str | None = None
    good_commit: str | None = None
    timeout: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    task_id: int
    attempt: int
    seq: int
    commit: str
    verdict: Verdict
    runs: int = 1
    bad_runs: int = 0
    job_id: str | None = None
    result_root: str | None = None
    reused: bool = False
    detail: str | None = None
    started_ms: int = 0
    duration_ms: int = 0
    created_at: int = 0
    phase: str | None = None
    # Flaky searches: the most likely culprits after this step, (commit, probability).
    posterior: tuple[tuple[str, float], ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        data["posterior"] = [list(pair) for pair in self.posterior]
        data["task_id"] = str(self.task_id)
        return data


@dataclass(frozen=True)
class StoredVerdict:
    repo_url: str
    commit: str
    tester_fingerprint: str
    error_id: str
    verdict: Verdict
    runs: int = 1
    bad_runs: int = 0
    job_id: str | None = None
    result_root: str | None = None
    task_id: int = 0
    updated_at: int = 0


@dataclass(frozen=True)
class Regression:
    """A row of compass-ci's ``regression`` table (sbin/manti-table-regression.sql)."""

    id: int
    errid: str
    record_type: str = "errid"
    category: str = ""
    first_seen: int = 0
    last_seen: int = 0
    metric_name: str = ""
    value: float = 0.0
    bisect_count: int = 0
    valid: str = "false"
    related_jobs: tuple[str, ...] = ()

    @property
    def whitelisted(self) -> bool:
        """compass-ci's rule: ``valid = 'true'``, compared as Manticore compares strings."""
        return self.valid.lower() == "true"


@dataclass(frozen=True)
class Culprit:
    """What a bisection found for an error id in one repository (table ``bisect_culprit``)."""

    errid: str
    git_url: str
    first_bad_commit: str
    bisect_task_id: int
    bad_job_id: str
    confidence: float = 0.0
    found_at: int = 0
