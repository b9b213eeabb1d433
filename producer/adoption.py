"""Adopting rows that compass-ci's own bisect service wrote into the shared ``bisect`` table.

compass-ci writes ``{bad_job_id, error_id, bisect_status: "wait", created_at}`` and nothing
else (compass-ci.md §4.2): no tester, repository or commit. Before such a row is handed to a
consumer, the task-state writer fills in what bisect-task needs from the bad job's row in
``jobs``, the way discovery would have, so the default tester can run it. A row that can never
run (an empty ``bad_job_id``, which compass-ci's producer wrote for every numeric job id, §4.3,
or a job that names no repository) is failed with the reason instead of waiting for ever.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from common.errors import ValidationError
from common.models import Task
from common.repository import Repository, task_display_name
from producer.submission import job_number, new_task_from_job


@dataclass(frozen=True)
class Adoption:
    task: Task | None  # the row, completed, when it can run
    problem: str | None = None  # why it cannot, for ``last_error``


def needs_adoption(task: Task) -> bool:
    """bisect-task names a tester on every row it writes; compass-ci never does."""
    return not task.tester


async def adopt(repo: Repository, task: Task, default_tester: str,
                repo_url_allow: Sequence[str]) -> Adoption:
    """Complete a row bisect-task did not write; the caller holds the writer's lock."""
    if not task.bad_job_id:
        return Adoption(None, "the row has no bad_job_id (compass-ci's producer stores a "
                              "numeric job id as ''): nothing to bisect")
    tester = default_tester
    number = job_number(task.bad_job_id)
    job = await repo.get_job(number) if number is not None else None
    if job is None:
        return Adoption(None, f"job {task.bad_job_id} is not in the jobs table")
    try:
        new = new_task_from_job(job, task.error_id, tester=tester, source="compass-ci",
                                repo_url_allow=repo_url_allow)
    except ValidationError as exc:
        return Adoption(None, exc.reason)
    extra = {**new.extra, **task.extra}
    name = task.name or task_display_name(new)
    await repo.set_task_origin(task, tester=tester, git_url=new.git_url or "",
                               project=new.project or "", suite=new.suite or "",
                               known_bad_commit=new.known_bad_commit or "", name=name,
                               extra=extra)
    return Adoption(dataclasses.replace(
        task, tester=tester, git_url=new.git_url, project=new.project, suite=new.suite,
        known_bad_commit=new.known_bad_commit, name=name, extra=extra))
