"""The plain-text report of a completed task, in the style of the kernel test robot's mails,
and the small formatting helpers the dashboard and the command-line client share."""

from __future__ import annotations

import time
from shlex import quote
from typing import Any

from common.models import Step, Task, TaskStatus, Verdict


def format_duration(seconds: float | None) -> str:
    """``45s``, ``3m 05s``, ``2h 07m``, ``3d 04h``; ``-`` when unknown."""
    if seconds is None or seconds < 0:
        return "-"
    total = int(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def format_time(epoch_s: int | None) -> str:
    """A UTC timestamp to the minute, ``-`` when unknown."""
    if not epoch_s:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(epoch_s)) + "Z"


def run_seconds(start_time: int | None, end_time: int | None, now: float | None = None
                ) -> float | None:
    if not start_time:
        return None
    return (end_time or (now if now is not None else time.time())) - start_time


def step_text(current: int, estimate: int, candidates_left: int) -> str:
    """``5 of ~10, 12 left``: the engine's progress; ``-`` before the first step."""
    if not current:
        return "-"
    text = f"{current} of ~{max(estimate, current)}" if estimate else str(current)
    if candidates_left:
        text += f", {candidates_left} left"
    return text


def short(commit: str | None, width: int = 12) -> str:
    return (commit or "-")[:width]


def result_of(task: Task) -> dict[str, Any]:
    result = task.extra.get("result")
    return result if isinstance(result, dict) else {}


def branch_of(task: Task) -> str | None:
    for key in ("branch", "upstream_branch"):
        value = task.extra.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def head_text(head: Any) -> str | None:
    """HEAD status as the engine gave it (an object of its own shape, or a string)."""
    if head is None or head == {}:
        return None
    if isinstance(head, dict):
        commit = head.get("commit")
        rest = ", ".join(f"{k}: {v}" for k, v in head.items() if k != "commit")
        return f"{short(str(commit)) if commit else 'HEAD'} {rest}".strip()
    return str(head)


def confidence_text(confidence: float | None) -> str:
    return "-" if confidence is None else f"{confidence * 100:.1f}%"


def first_bad_step(task: Task, steps: list[Step]) -> Step | None:
    bad = [s for s in steps if s.commit == task.bad_commit and s.verdict is Verdict.BAD]
    return bad[-1] if bad else None


def _step_comment(step: Step) -> str:
    parts = [f"runs {step.runs}" + (f" ({step.bad_runs} bad)" if step.bad_runs else "")]
    if step.job_id:
        parts.append(f"job {step.job_id}")
    if step.duration_ms:
        parts.append(format_duration(step.duration_ms / 1000))
    if step.reused:
        parts.append("reused")
    return ", ".join(parts)


def bisection_log(task: Task, steps: list[Step]) -> list[str]:
    """Every step in ``git bisect log`` form, with runs and jobs as comments."""
    lines = [f"git bisect start {task.known_bad_commit or '?'} {task.good_commit or ''}".rstrip()]
    for step in steps:
        lines.append(f"# {step.verdict.value}: [{step.commit}] {_step_comment(step)}")
        lines.append(f"git bisect {step.verdict.value} {step.commit}")
    if task.bad_commit:
        subject = result_of(task).get("subject") or ""
        lines.append(f"# first bad commit: [{task.bad_commit}] {subject}".rstrip())
    return lines


def good_end(task: Task, steps: list[Step]) -> str | None:
    """The good end of the searched range: given with the task, or the first good commit
    the engine found (the one its range started from)."""
    if task.good_commit:
        return task.good_commit
    return next((s.commit for s in steps if s.verdict is Verdict.GOOD), None)


def test_command(task: Task) -> list[str] | None:
    """The tester profile's command as the consumer recorded it with the result: a list of
    arguments, or a shell string (run through ``sh -c``)."""
    command = result_of(task).get("test_command")
    if isinstance(command, str) and command.strip():
        return ["sh", "-c", command]
    if isinstance(command, list) and command and all(isinstance(a, str) for a in command):
        return list(command)
    return None


def reproduce_lines(task: Task, steps: list[Step] | None = None) -> list[str]:
    """A ``bisect-run`` command that runs as printed (every value shell-quoted: error ids and
    URLs come from outside and are pasted into terminals), and compass-ci's jobs."""
    lines: list[str] = []
    command = test_command(task)
    if command is not None and task.git_url and task.known_bad_commit:
        good = good_end(task, steps or [])
        lines.append(" ".join([
            "bisect-run", "--repo", quote(task.git_url), "--bad", quote(task.known_bad_commit),
            *(["--good", quote(good)] if good else []), "--error-id", quote(task.error_id),
            "--", *(quote(arg) for arg in command)]))
    else:
        lines.append(f"tester profile {task.tester or 'default'} recorded no test command to "
                     "run with bisect-run" + ("; resubmit the compass-ci job below"
                                              if task.first_result_root
                                              or task.extra.get("bad_result_root") else ""))
    bad_root = task.extra.get("bad_result_root")
    if bad_root or task.first_bad_id or task.first_result_root:
        lines.append("")
        lines.append("compass-ci jobs:")
        lines.append(f"  bad job:        {task.bad_job_id}"
                     + (f"  result_root {bad_root}" if bad_root else ""))
        if task.first_bad_id or task.first_result_root:
            lines.append(f"  first bad job:  {task.first_bad_id or '-'}"
                         + (f"  result_root {task.first_result_root}"
                            if task.first_result_root else ""))
        root = task.first_result_root or bad_root
        # The job key that selects the commit (program.makepkg.commit, ss.<pkg>.commit, ...).
        key = task.extra.get("commit_key")
        commit_key = key if isinstance(key, str) and key else "upstream_commit"
        if root:
            lines.append(f"  resubmit:       submit {quote(root.rstrip('/') + '/job.yaml')} "
                         f"{commit_key}={quote(task.bad_commit or task.known_bad_commit or '')}")
    return lines


def render_report(task: Task, steps: list[Step]) -> str:
    """The report of a completed task (callers check the status)."""
    result = result_of(task)
    out = [
        "Greeting,",
        "",
        f'bisect-task found the first bad commit of error "{task.error_id}"'
        + (f" in suite {task.suite}" if task.suite else "") + f" (task {task.id}).",
        "",
        f"tree:    {task.git_url or '-'}",
    ]
    branch = branch_of(task)
    if branch:
        out.append(f"branch:  {branch}")
    out.append(f"commit:  {task.bad_commit or '-'}"
               + (f' ("{result["subject"]}")' if result.get("subject") else ""))
    if result.get("author"):
        out.append(f"author:  {result['author']}")
    if result.get("date"):
        out.append(f"date:    {result['date']}")
    good = good_end(task, steps)
    found = "" if task.good_commit or good is None else " (good commit found by the search)"
    out += [f"range:   {good or '(no good commit)'}..{task.known_bad_commit or '-'}{found}",
            f"confidence: {confidence_text(task.confidence)}, verification: "
            f"{task.verification or '-'}"
            + (f" ({result['verification_detail']})" if result.get("verification_detail")
               else ""),
            "",
            f"error id: {task.error_id}"]
    culprit = first_bad_step(task, steps)
    if culprit is not None and culprit.detail:
        where = f" (job {culprit.job_id})" if culprit.job_id else ""
        out.append(f"log line{where}:")
        out += [f"    {line}" for line in culprit.detail.splitlines()[:20]]
    head = head_text(result.get("head"))
    out += ["", f"HEAD status: {head or 'not checked'}", "", "bisection log:"]
    out += [f"  {line}" for line in bisection_log(task, steps)]
    out += ["", "to reproduce:"]
    out += [f"  {line}" if line else "" for line in reproduce_lines(task, steps)]
    out += ["", "---", f"bisect-task, task {task.id}, {len(steps)} steps, run time "
            f"{format_duration(run_seconds(task.start_time, task.end_time))}"]
    return "\n".join(out) + "\n"


def report_unavailable(task: Task) -> str:
    if task.status is TaskStatus.FAILED:
        return f"task {task.id} failed ({task.last_error or 'no reason given'}); no report"
    return f"task {task.id} is {task.status.value}; the report is written when it completes"
