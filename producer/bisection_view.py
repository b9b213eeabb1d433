"""What a reader of the dashboard wants to know about a task at a glance, in words: its name,
the phase it is in, its progress in steps, the range, and its result.

Pure functions of a task and its step rows (no I/O), shared by the pages and their tests.
A running task's phase and each step's phase are recorded (``Task.phase``, ``Step.phase``;
producer/dashboard_phase.py reads them). For rows written before they were, the phase is
read from what the steps show (no good commit yet: finding one; the search done: verifying,
then checking HEAD), and a finished task's from ``result.tested``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.models import Step, Task, TaskStatus, Verdict
from producer.report import confidence_text, result_of, short

PHASE_WORDS = {
    "check_bad": "checking the bad commit",
    "find_good": "finding a good commit",
    "search": "searching",
    "verify": "verifying the culprit",
    "head": "checking HEAD",
}


@dataclass(frozen=True)
class TaskName:
    """Three things that tell tasks apart: repository, error id, job."""

    repository: str
    error_id: str
    job: str


def task_name(task: Task) -> TaskName:
    repository = task.project or ""
    if not repository and task.git_url:
        repository = task.git_url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    return TaskName(repository or task.suite or "-", task.error_id, task.bad_job_id)


def title(task: Task) -> str:
    name = task_name(task)
    return f"{name.repository} · {name.error_id} · job {name.job}"


def tested_phases(task: Task) -> dict[str, str]:
    """commit -> the phase it was first tested in, from a finished task's result."""
    phases: dict[str, str] = {}
    tested = result_of(task).get("tested")
    if isinstance(tested, list):
        for item in tested:
            if isinstance(item, dict) and isinstance(item.get("commit"), str):
                phases.setdefault(item["commit"], str(item.get("phase") or ""))
    return phases


def found_good(task: Task, steps: list[Step]) -> str | None:
    """The good end of the range: given, or the first good commit the search found."""
    if task.good_commit:
        return task.good_commit
    phases = tested_phases(task)
    for step in steps:
        if step.verdict is Verdict.GOOD and phases.get(step.commit, "find_good") in (
                "find_good", ""):
            return step.commit
    return None


def range_text(task: Task, steps: list[Step]) -> str:
    bad = short(task.known_bad_commit)
    good = found_good(task, steps)
    if good is None:
        if task.status is TaskStatus.WAIT:
            return f"up to {bad} (a good commit will be searched)"
        return f"up to {bad} (looking for a good commit)"
    how = "given" if task.good_commit else "found"
    return f"{short(good)}..{bad} (good commit {how})"


def _search_done(task: Task) -> bool:
    return task.current_step > 0 and task.candidates_left <= 1 and (
        task.steps_estimate <= task.current_step)


def phase(task: Task, steps: list[Step]) -> str:
    """The phase in words."""
    status = task.status
    if not status.known:
        return f"{status.value} (a status of another service)"
    if status is TaskStatus.WAIT:
        return "waiting for a consumer"
    if status.is_final:
        if task.cancelled:
            return "cancelled"
        return "finished" if status is TaskStatus.COMPLETED else "failed"
    if not steps:
        return PHASE_WORDS["check_bad"]
    if found_good(task, steps) is None:
        return PHASE_WORDS["find_good"]
    if _search_done(task):
        last = steps[-1]
        retested = any(s.commit == last.commit for s in steps[:-1])
        # After the search: the culprit and its parent are tested again, then HEAD (new).
        return PHASE_WORDS["verify"] if retested or len(steps) < 2 else PHASE_WORDS["head"]
    left = task.candidates_left
    return PHASE_WORDS["search"] + (f", {left} candidates left" if left > 1 else "")


def last_tested(steps: list[Step]) -> Step | None:
    return steps[-1] if steps else None


def progress(task: Task, steps: list[Step]) -> str:
    """Steps, never candidates: ``step 5 of ~9`` while it runs, ``9 steps`` once done."""
    tested = result_of(task).get("tested")
    done = max(task.current_step, len({(s.commit, s.seq, s.attempt) for s in steps}),
               len(tested) if isinstance(tested, list) else 0)
    if task.status.is_final or not task.status.known:
        return f"{done} step{'' if done == 1 else 's'}" if done else "no step"
    if task.status is TaskStatus.WAIT or not done:
        return "not started" if task.status is TaskStatus.WAIT else "starting"
    if task.steps_estimate > done:
        return f"step {done} of ~{task.steps_estimate}"
    return f"step {done}"


def progress_percent(task: Task, steps: list[Step]) -> int | None:
    if task.status.is_final or not task.steps_estimate:
        return None
    done = max(task.current_step, len(steps))
    return min(100, round(100 * done / max(task.steps_estimate, done, 1)))


@dataclass(frozen=True)
class ResultSummary:
    """The result column: the culprit and how sure, or why there is none (yet)."""

    kind: str  # "found", "failed", "running", "waiting", "other"
    commit: str | None = None
    subject: str | None = None
    confidence: str | None = None
    text: str = ""


def result_summary(task: Task) -> ResultSummary:
    status = task.status
    if status is TaskStatus.COMPLETED and task.bad_commit:
        subject = result_of(task).get("subject")
        return ResultSummary("found", short(task.bad_commit), str(subject) if subject else None,
                             confidence_text(task.confidence))
    if status.is_final:
        reason = "cancelled" if task.cancelled else (task.last_error or "no reason given")
        return ResultSummary("failed", text=reason[:160])
    if status is TaskStatus.WAIT:
        return ResultSummary("waiting", text="not started")
    if status is TaskStatus.PROCESSING:
        return ResultSummary("running", text="searching")
    return ResultSummary("other", text=status.value)


def status_label(task: Task) -> str:
    """The stored status as it is; a cancel (stored as failed) says so."""
    if task.status is TaskStatus.FAILED and task.cancelled:
        return "cancelled"
    return task.status.value


def result_facts(task: Task) -> dict[str, Any]:
    """The finished result's details the task page lists."""
    return result_of(task)
