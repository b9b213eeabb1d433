"""From a submission (API) or a failed job (discovery) to the task the writer creates."""

from __future__ import annotations

from typing import Any

from common.errors import ValidationError
from common.models import Job, NewTask
from common.repository import Repository
from producer.validation import SubmitRequest


def _project_of(git_url: str | None, job_data: dict[str, Any]) -> str | None:
    repo = job_data.get("upstream_repo")
    if isinstance(repo, str) and repo:
        return repo
    if not git_url:
        return None
    tail = git_url.rstrip("/").rsplit("/", 1)[-1]
    return tail.removesuffix(".git") or None


def _job_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def new_task_from_job(job: Job, error_id: str, *, tester: str, source: str,
                      priority: int = 0, good_commit: str | None = None,
                      timeout: int | None = None) -> NewTask:
    git_url = _job_str(job.data, "upstream_url")
    return NewTask(
        bad_job_id=str(job.id),
        error_id=error_id,
        priority=priority,
        git_url=git_url,
        project=_project_of(git_url, job.data),
        suite=job.suite,
        tester=tester,
        source=source,
        known_bad_commit=_job_str(job.data, "upstream_commit"),
        good_commit=good_commit,
        timeout=timeout,
        extra={"bad_result_root": _job_str(job.data, "result_root") or "",
               "branch": _job_str(job.data, "upstream_branch") or ""},
    )


async def new_task_from_request(request: SubmitRequest, repo: Repository,
                                default_tester: str) -> NewTask:
    """Fill in the repository and commit from the bad job, unless the request gives them."""
    number = _job_number(request.bad_job_id)
    job = await repo.get_job(number) if number is not None else None
    return new_task_with_job(request, job, default_tester)


def _job_number(bad_job_id: str) -> int | None:
    """compass-ci job ids are positive 63-bit integers; anything else names no job."""
    if not bad_job_id.isdigit() or len(bad_job_id) > 19:
        return None
    number = int(bad_job_id)
    return number if 0 < number < 2**63 else None


async def new_tasks_from_requests(requests: list[SubmitRequest], repo: Repository,
                                  default_tester: str) -> list[NewTask | ValidationError]:
    """The batch form: one query for all the jobs; each item a task or its error."""
    numbers = [_job_number(r.bad_job_id) for r in requests]
    jobs = await repo.jobs_by_ids([n for n in numbers if n is not None])
    out: list[NewTask | ValidationError] = []
    for request, number in zip(requests, numbers, strict=True):
        job = jobs.get(number) if number is not None else None
        try:
            out.append(new_task_with_job(request, job, default_tester))
        except ValidationError as exc:
            out.append(exc)
    return out


def new_task_with_job(request: SubmitRequest, job: Job | None, default_tester: str) -> NewTask:
    tester = request.tester or default_tester
    if job is not None:
        task = new_task_from_job(job, request.error_id, tester=tester, source="api",
                                 priority=request.priority, good_commit=request.good_commit,
                                 timeout=request.timeout)
        if request.repo_url or request.bad_commit:
            git_url = request.repo_url or task.git_url
            task = NewTask(**{**task.__dict__, "git_url": git_url,
                              "project": _project_of(git_url, {}),
                              "known_bad_commit": request.bad_commit or task.known_bad_commit})
        if not task.git_url or not task.known_bad_commit:
            raise ValidationError("bad_job_id", "the job has no upstream_url/upstream_commit; "
                                                "give repo_url and bad_commit")
        return task
    if not request.repo_url or not request.bad_commit:
        raise ValidationError("bad_job_id", "no job with this id in the jobs table; tasks "
                                            "outside compass-ci need repo_url and bad_commit")
    return NewTask(
        bad_job_id=request.bad_job_id,
        error_id=request.error_id,
        priority=request.priority,
        git_url=request.repo_url,
        project=_project_of(request.repo_url, {}),
        tester=tester,
        source="api",
        known_bad_commit=request.bad_commit,
        good_commit=request.good_commit,
        timeout=request.timeout,
    )
