"""compass-ci's bisect API, answered as its ``compact`` branch answers it (compass-ci.md §6).

A compass-ci site stops its old bisect container and points its clients here: same paths,
same bodies, same status codes. The only addition is the task id in ``new_bisect_task``'s
``data`` (compass-ci's clients ignore ``data``). Writes need an API token unless
``BISECT_LEGACY_WRITES=open`` (compass-ci's service has no tokens); bisect-task's own routes
under ``/api/v1/tasks`` keep their shapes and tokens.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from aiohttp import web

from common.errors import BisectError, ValidationError
from common.models import NewTask
from producer.middleware import Access, json_response
from producer.routes import Route, _writer_state
from producer.state import STATE_KEY
from producer.submission import job_number, new_task_from_job
from producer.validation import MAX_ERROR_ID_BYTES, parse_job_id

log = structlog.get_logger(__name__)

LEGACY_LIST_LIMIT = 1000
LEGACY_MAX_BODY = 64 * 1024
_REQUIRED = ("bad_job_id", "error_id")


def _answer(code: int, message: str, data: dict[str, Any] | None = None) -> web.Response:
    return json_response({"code": code, "data": data, "message": message}, code)


async def _body(request: web.Request) -> Any:
    """The JSON body whatever its content type (compass-ci's clients vary); ``None`` empty."""
    raw = await request.read()
    if not raw.strip():
        return None
    return json.loads(raw)


def _error_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError("error_id", "must be a non-empty string")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_ERROR_ID_BYTES or any(
            ord(ch) < 32 for ch in value):
        raise ValidationError("error_id", f"must be at most {MAX_ERROR_ID_BYTES} bytes of "
                                          "printable text")
    return value


async def new_bisect_task(request: web.Request) -> web.Response:
    try:
        body = await _body(request)
    except (ValueError, UnicodeDecodeError):
        return _answer(400, "Request body is not valid JSON")
    if not body:
        return _answer(400, "No task data provided")
    if not isinstance(body, dict) or any(key not in body for key in _REQUIRED):
        return _answer(400, "Missing required fields: bad_job_id, error_id")
    try:
        bad_job_id = parse_job_id(body["bad_job_id"])
        error_id = _error_id(body["error_id"])
    except ValidationError as exc:
        return _answer(400, f"{exc.field}: {exc.reason}")
    state = await _writer_state(request)
    try:
        new = await _new_task(request, bad_job_id, error_id)
        (result,) = await state.writer.submit([new])
    except BisectError as exc:
        log.warning("legacy_submit_failed", bad_job_id=bad_job_id, error=str(exc))
        return _answer(500, "Failed to add task")
    if result.created:
        state.metrics.tasks_created.labels("api").inc()
    log.info("legacy_task_added", task_id=result.task.id, bad_job_id=bad_job_id,
             created=result.created)
    return _answer(200, "Task added successfully", {"task_id": str(result.task.id)})


async def _new_task(request: web.Request, bad_job_id: str, error_id: str) -> NewTask:
    """From the job when it can be read now; otherwise a bare row, as compass-ci writes it,
    that the writer completes from the job at its first claim (or fails with the reason)."""
    state = request.app[STATE_KEY]
    number = job_number(bad_job_id)
    job = await state.repo.get_job(number) if number is not None else None
    if job is not None:
        try:
            return new_task_from_job(job, error_id, tester=state.settings.default_tester,
                                     source="compass-api",
                                     repo_url_allow=state.settings.repo_url_allow)
        except ValidationError:
            pass
    return NewTask(bad_job_id=bad_job_id, error_id=error_id, tester="", source="compass-api")


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return LEGACY_LIST_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= LEGACY_LIST_LIMIT:
        raise ValidationError("limit", f"must be an integer from 1 to {LEGACY_LIST_LIMIT}")
    return int(raw)


async def list_bisect_tasks(request: web.Request) -> web.Response:
    rows = await request.app[STATE_KEY].repo.legacy_task_rows(status=None,
                                                              limit=_limit(request))
    return json_response({"tasks": rows})


async def list_tasks_by_status(request: web.Request) -> web.Response:
    status = request.query.get("status")
    if not status:
        raise ValidationError("status", "is required (wait, processing, completed, failed)")
    rows = await request.app[STATE_KEY].repo.legacy_task_rows(status=status,
                                                              limit=_limit(request))
    return json_response({"tasks": rows})


async def delete_failed_tasks(request: web.Request) -> web.Response:
    state = await _writer_state(request)
    return json_response({"status": "success",
                          "deleted_count": await state.writer.delete_failed()})


ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/v1/new_bisect_task", new_bisect_task, Access.LEGACY_WRITE,
          "compass-ci: add a bisect task {bad_job_id, error_id} (extra fields ignored)",
          body="LegacySubmit", responses={200: "LegacyAnswer", 400: "LegacyAnswer",
                                          500: "LegacyAnswer"},
          max_body=LEGACY_MAX_BODY),
    Route("GET", "/api/v1/list_bisect_tasks", list_bisect_tasks, Access.READ,
          "compass-ci: tasks, newest id first", query=("limit",),
          responses={200: "LegacyTaskList"}),
    Route("GET", "/api/v1/list_tasks_by_status", list_tasks_by_status, Access.READ,
          "compass-ci: tasks with one bisect_status, newest id first",
          query=("status", "limit"), responses={200: "LegacyTaskList", 422: "Error"}),
    Route("DELETE", "/api/v1/delete_failed_tasks", delete_failed_tasks, Access.LEGACY_WRITE,
          "compass-ci: delete every failed task", responses={200: "LegacyDeleted"}),
)
