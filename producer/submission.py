"""From a submission (API) or a failed job (discovery) to the task the writer creates."""

from __future__ import annotations

import re
from collections.abc import Sequence

from common.compass_job import CompassJob
from common.errors import ValidationError
from common.models import NewTask
from common.repository import Repository
from common.urls import check_repo_url
from producer.validation import SubmitRequest

MAX_KEY_LEN = 255  # the longest value a key column holds (VARCHAR(255) on MariaDB)
MAX_URL_LEN = 2048
# A commit a job names: what git accepts as a revision, nothing an option parser would take.
_COMMIT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./^~@{}-]{0,254}$")


def _project_of(git_url: str | None, package: str | None = None) -> str | None:
    if package:
        return package
    if not git_url:
        return None
    tail = git_url.rstrip("/").rsplit("/", 1)[-1]
    return tail.removesuffix(".git") or None


def _fit(field: str, value: str | None, limit: int = MAX_KEY_LEN) -> str | None:
    if value is not None and (len(value) > limit or any(ord(ch) < 32 for ch in value)):
        raise ValidationError(field, f"is {len(value)} characters or holds control characters "
                                     f"(at most {limit} printable characters fit)")
    return value


def new_task_from_job(job: CompassJob, error_id: str, *, tester: str, source: str,
                      repo_url_allow: Sequence[str], priority: int = 0,
                      good_commit: str | None = None, timeout: int | None = None) -> NewTask:
    """The task that bisects ``error_id`` of a compass-ci job. Raises ValidationError naming
    what makes the job unfit (no repository, a URL the allow-list refuses, no commit, a value
    too long to store). A job's URL is checked like a submitted one: anyone who can submit a
    compass-ci job writes it, and a consumer will fetch it."""
    where = job.source
    if where is None:
        raise ValidationError("bad_job_id", f"job {job.id} names no repository "
                              "(no program.makepkg._url, ss.<pkg>._url or upstream_url)")
    git_url = check_repo_url(where.git_url, repo_url_allow, "git_url")
    if not where.commit or not _COMMIT.match(where.commit):
        raise ValidationError("bad_job_id", f"job {job.id} names no usable commit at "
                              f"{where.commit_key}")
    _fit("error_id", error_id, 8192)
    return NewTask(
        bad_job_id=str(job.id),
        error_id=error_id,
        priority=priority,
        git_url=git_url,
        project=_fit("project", _project_of(git_url, where.package)),
        suite=_fit("suite", job.suite or None),
        tester=tester,
        source=source,
        known_bad_commit=where.commit,
        good_commit=good_commit,
        timeout=timeout,
        extra={"bad_result_root": _fit("result_root", job.result_root or "", MAX_URL_LEN),
               "commit_key": where.commit_key, "compass_job": True,
               "discovered": source == "discovery", "category": job.category},
    )


async def new_task_from_request(request: SubmitRequest, repo: Repository,
                                default_tester: str, repo_url_allow: Sequence[str]) -> NewTask:
    """Fill in the repository and commit from the bad job, unless the request gives them."""
    number = job_number(request.bad_job_id)
    job = await repo.get_job(number) if number is not None else None
    return new_task_with_job(request, job, default_tester, repo_url_allow)


def job_number(bad_job_id: str) -> int | None:
    """compass-ci job ids are positive 63-bit integers; anything else names no job."""
    if not bad_job_id.isdigit() or len(bad_job_id) > 19:
        return None
    number = int(bad_job_id)
    return number if 0 < number < 2**63 else None


async def new_tasks_from_requests(requests: list[SubmitRequest], repo: Repository,
                                  default_tester: str, repo_url_allow: Sequence[str]
                                  ) -> list[NewTask | ValidationError]:
    """The batch form: one query for all the jobs; each item a task or its error."""
    numbers = [job_number(r.bad_job_id) for r in requests]
    jobs = await repo.jobs_by_ids([n for n in numbers if n is not None])
    out: list[NewTask | ValidationError] = []
    for request, number in zip(requests, numbers, strict=True):
        job = jobs.get(number) if number is not None else None
        try:
            out.append(new_task_with_job(request, job, default_tester, repo_url_allow))
        except ValidationError as exc:
            out.append(exc)
    return out


def new_task_with_job(request: SubmitRequest, job: CompassJob | None,
                      default_tester: str, repo_url_allow: Sequence[str]) -> NewTask:
    """A task from an API request: the bad job's repository and commit unless the request
    names them. A request that names another repository is a task outside compass-ci."""
    tester = request.tester or default_tester
    from_job: NewTask | None = None
    if job is not None:
        try:
            from_job = new_task_from_job(job, request.error_id, tester=tester, source="api",
                                         repo_url_allow=repo_url_allow,
                                         priority=request.priority,
                                         good_commit=request.good_commit,
                                         timeout=request.timeout)
        except ValidationError:
            if not (request.repo_url and request.bad_commit):
                raise
    if from_job is not None and (request.repo_url or from_job.git_url) == from_job.git_url:
        if request.bad_commit:
            return NewTask(**{**from_job.__dict__, "known_bad_commit": request.bad_commit})
        return from_job
    if not request.repo_url or not request.bad_commit:
        raise ValidationError("bad_job_id", "no job with this id in the jobs table; tasks "
                                            "outside compass-ci need repo_url and bad_commit")
    return NewTask(
        bad_job_id=request.bad_job_id,
        error_id=request.error_id,
        priority=request.priority,
        git_url=request.repo_url,
        project=_project_of(request.repo_url),
        suite=job.suite or None if job is not None else None,
        tester=tester,
        source="api",
        known_bad_commit=request.bad_commit,
        good_commit=request.good_commit,
        timeout=request.timeout,
    )
