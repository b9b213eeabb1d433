"""The dashboard (server-rendered HTML with a little polling JavaScript) and the plain-text
report route. ``producer.app`` registers ``ROUTES`` beside the API's."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from aiohttp import web

from common.errors import ValidationError
from common.models import Task, TaskStatus
from common.repository import TaskFilter
from producer import templates
from producer.middleware import (
    SESSION_COOKIE,
    Access,
    error_response,
    json_response,
    read_token_ok,
)
from producer.report import render_report, report_unavailable
from producer.routes import Route
from producer.state import STATE_KEY, ProducerState
from producer.validation import (
    format_cursor,
    parse_cursor,
    parse_limit,
    parse_status,
    parse_task_id,
)

_QUERY = ("status", "suite", "error_id", "group", "cursor", "limit")
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(templates.JS.encode()).digest()).decode()
# Only our own inline script runs: anything that slipped past escaping would not execute.
_HEADERS = {
    "Content-Security-Policy": (f"default-src 'self'; script-src 'sha256-{_SCRIPT_HASH}'; "
                                "style-src 'unsafe-inline'; img-src 'self' data:; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _state(request: web.Request) -> ProducerState:
    return request.app[STATE_KEY]


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8",
                        headers=_HEADERS)


def _query(request: web.Request) -> dict[str, str]:
    return {key: request.query[key] for key in _QUERY if request.query.get(key)}


async def _page_of_tasks(state: ProducerState, query: dict[str, str]
                         ) -> tuple[list[Task], str | None]:
    """One page of the task list, newest first, and the cursor of the next (API semantics)."""
    task_filter = TaskFilter(status=parse_status(query.get("status")),
                             error_id=query.get("error_id"), suite=query.get("suite"),
                             group_key=query.get("group"))
    limit = parse_limit(query.get("limit"))
    rows = await state.repo.list_tasks(task_filter, limit=limit,
                                       before=parse_cursor(query.get("cursor")))
    next_cursor = format_cursor(rows[-1].created_at, rows[-1].id) if len(rows) == limit else None
    return [t for t in rows if task_filter.matches_exactly(t)], next_cursor


def _live_url(path: str, query: dict[str, str]) -> str:
    return templates.href(path, query).replace("&amp;", "&")


async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/dashboard")


async def dashboard(request: web.Request) -> web.Response:
    state = _state(request)
    query = _query(request)
    counts = await state.repo.count_by_status()
    live = _live_url("/dashboard/live", query)
    try:
        tasks, next_cursor = await _page_of_tasks(state, query)
    except ValidationError as exc:
        return _html(templates.list_page(tasks=[], counts=counts, query=query, next_cursor=None,
                                         live=live, error=f"{exc.field}: {exc.reason}"), 422)
    return _html(templates.list_page(tasks=tasks, counts=counts, query=query,
                                     next_cursor=next_cursor, live=live))


async def dashboard_live(request: web.Request) -> web.Response:
    state = _state(request)
    query = _query(request)
    tasks, _ = await _page_of_tasks(state, query)
    counts = await state.repo.count_by_status()
    return json_response({"final": False, "status": None, "parts": {
        "live-counts": templates.counts_html(counts, query.get("status")),
        "live-rows": templates.rows_html(tasks)}})


async def _task_or_none(state: ProducerState, raw_id: str) -> Task | None:
    try:
        return await state.repo.get_task(parse_task_id(raw_id))
    except ValidationError:
        return None


async def task_page(request: web.Request) -> web.Response:
    state = _state(request)
    task = await _task_or_none(state, request.match_info["id"])
    if task is None:
        return _html(templates.message_page(
            "Task not found", f"no task with id {request.match_info['id']}"), 404)
    steps = await state.repo.steps_of_task(task.id)
    report = render_report(task, steps) if task.status is TaskStatus.COMPLETED else None
    return _html(templates.task_page(task, steps, report))


async def task_live(request: web.Request) -> web.Response:
    state = _state(request)
    task = await _task_or_none(state, request.match_info["id"])
    if task is None:
        return error_response(404, f"no task with id {request.match_info['id']}", "id")
    steps = await state.repo.steps_of_task(task.id)
    data: dict[str, Any] = {"status": task.status.value, "final": task.status.is_final,
                            "parts": {"live-summary": templates.summary_html(task, len(steps)),
                                      "live-timeline": templates.timeline_html(steps)}}
    return json_response(data)


def _local_next(value: str | None) -> str:
    """Where to go after signing in: a dashboard path of ours, never another site."""
    if value and value.startswith("/dashboard") and "//" not in value and "\\" not in value:
        return value
    return "/dashboard"


async def login_form(request: web.Request) -> web.Response:
    return _html(templates.login_page(_local_next(request.query.get("next")), error=None))


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token = str(form.get("token", "")).strip()
    target = _local_next(str(form.get("next", "")))
    if not read_token_ok(request, token or None):
        return _html(templates.login_page(target, error="that token is not valid"), 403)
    response = web.HTTPSeeOther(target)
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict",
                        secure=request.secure, path="/", max_age=7 * 24 * 3600)
    raise response


async def task_report(request: web.Request) -> web.Response:
    state = _state(request)
    task_id = parse_task_id(request.match_info["id"])
    task = await state.repo.get_task(task_id)
    if task is None:
        return error_response(404, f"no task with id {task_id}", "id")
    if task.status is not TaskStatus.COMPLETED:
        return error_response(409, report_unavailable(task), "status")
    steps = await state.repo.steps_of_task(task_id)
    return web.Response(text=render_report(task, steps), content_type="text/plain",
                        charset="utf-8")


ROUTES: tuple[Route, ...] = (
    Route("GET", "/", root, Access.OPEN, "Redirect to the dashboard", responses={302: "Text"}),
    Route("GET", "/dashboard/login", login_form, Access.OPEN,
          "Sign-in form for the dashboard when reads need a token", query=("next",),
          responses={200: "Html"}),
    Route("POST", "/dashboard/login", login, Access.OPEN,
          "Sign in with an API token (kept in an HttpOnly cookie that only reads accept)",
          responses={303: "Text", 403: "Html"}),
    Route("GET", "/dashboard", dashboard, Access.READ,
          "Dashboard: counts by status and the task list (HTML)", query=_QUERY,
          responses={200: "Html", 422: "Html"}),
    Route("GET", "/dashboard/live", dashboard_live, Access.READ,
          "Dashboard: fresh counts and task rows as HTML fragments, for polling",
          query=_QUERY, responses={200: "Object", 422: "Error"}),
    Route("GET", r"/dashboard/tasks/{id:\d+}", task_page, Access.READ,
          "Dashboard: one task with its timeline, result and report (HTML)",
          responses={200: "Html", 404: "Html"}),
    Route("GET", r"/dashboard/tasks/{id:\d+}/live", task_live, Access.READ,
          "Dashboard: a task's status, progress and timeline as HTML fragments, for polling",
          responses={200: "Object", 404: "Error"}),
    Route("GET", r"/api/v1/tasks/{id:\d+}/report", task_report, Access.READ,
          "The report of a completed task (plain text); 409 while it is not completed",
          responses={200: "Text", 404: "Error", 409: "Error"}),
)
