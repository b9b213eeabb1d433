"""The dashboard (Jinja2 templates with autoescape, rendered on the server, a little polling
JavaScript), its sign-in and its retry/cancel forms, and the plain-text report route.
``producer.app`` registers ``ROUTES`` beside the API's."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp_jinja2
import jinja2
from aiohttp import web
from markupsafe import Markup

from common.errors import ValidationError
from common.models import Step, Task, TaskStatus
from common.repository import TaskFilter
from producer import (
    bisection_picture,
    bisection_view,
    dashboard_phase,
    dashboard_posterior,
)
from producer.errors import InvalidTransition, TaskNotFound
from producer.middleware import (
    SESSION_COOKIE,
    Access,
    error_response,
    json_response,
    read_token_ok,
)
from producer.report import (
    branch_of,
    confidence_text,
    format_duration,
    format_time,
    head_text,
    render_report,
    report_unavailable,
    result_of,
    run_seconds,
    short,
)
from producer.routes import Route
from producer.sessions import LOGIN_LIMITER, SESSIONS, Session, csrf_ok
from producer.state import STATE_KEY, ProducerState
from producer.validation import (
    format_cursor,
    parse_cursor,
    parse_limit,
    parse_status,
    parse_task_id,
)

_QUERY = ("status", "suite", "error_id", "group", "cursor", "limit")
LOGIN_MAX_BODY = 4096  # a token and a path: a few hundred bytes; nothing larger is read
ACTION_MAX_BODY = 1024
_STATIC = resources.files("producer") / "static"
CSS = _STATIC.joinpath("dashboard.css").read_text(encoding="utf-8")
JS = _STATIC.joinpath("dashboard.js").read_text(encoding="utf-8")
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(JS.encode()).digest()).decode()
# Only our own inline script runs: anything that slipped past escaping would not execute.
_HEADERS = {
    "Content-Security-Policy": (f"default-src 'self'; script-src 'sha256-{_SCRIPT_HASH}'; "
                                "style-src 'unsafe-inline'; img-src 'self' data:; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
_LABELS = frozenset({*(s.value for s in TaskStatus), "good", "bad", "skip", "flaky"})


def _duration_ms(value: int | None) -> str:
    return format_duration(value / 1000 if value else None)


def build_environment() -> jinja2.Environment:
    """Templates under ``producer/templates``; autoescape on for every one of them."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("producer", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False)
    env.globals.update(css=Markup(CSS), js=Markup(JS), known_labels=_LABELS)
    env.filters["duration_ms"] = _duration_ms
    return env


ENVIRONMENT = build_environment()


def setup(app: web.Application) -> None:
    """Register the dashboard's templates with aiohttp-jinja2 (``create_app`` calls it)."""
    aiohttp_jinja2.setup(app, loader=ENVIRONMENT.loader, autoescape=True,
                         undefined=jinja2.StrictUndefined)
    env = aiohttp_jinja2.get_env(app)
    env.globals.update(ENVIRONMENT.globals)
    env.filters.update(ENVIRONMENT.filters)


def _environment(request: web.Request) -> jinja2.Environment:
    return aiohttp_jinja2.get_env(request.app)


def _session(request: web.Request) -> Session | None:
    return SESSIONS.get(request.cookies.get(SESSION_COOKIE))


def _render(request: web.Request, name: str, context: dict[str, Any],
            status: int = 200) -> web.Response:
    context = {"live": None, "live_status": None, "signed_in": _session(request) is not None,
               **context}
    text = _environment(request).get_template(name).render(context)
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8",
                        headers=_HEADERS)


def _macro(request: web.Request, name: str, *args: Any) -> str:
    """One macro of ``_macros.html`` rendered alone: the fragments the live routes return."""
    module = _environment(request).get_template("_macros.html").module
    return str(getattr(module, name)(*args))


def _message(request: web.Request, title: str, message: str, status: int) -> web.Response:
    return _render(request, "message.html", {"page_title": title, "message": message}, status)


def _state(request: web.Request) -> ProducerState:
    return request.app[STATE_KEY]


def _href(path: str, query: dict[str, str | None]) -> str:
    params = {k: v for k, v in query.items() if v}
    return path + ("?" + urlencode(params) if params else "")


# ---------------------------------------------------------------- views
@dataclass(frozen=True)
class TaskView:
    task: Task
    name: bisection_view.TaskName
    status: str
    phase: str
    testing: str | None  # the commit under test now, when the consumer recorded it
    progress: str
    percent: int | None
    last: Step | None
    range: str
    result: bisection_view.ResultSummary
    created: str
    started: str
    run_time: str

    @property
    def retryable(self) -> bool:
        return self.task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED)

    @property
    def cancellable(self) -> bool:
        return self.task.status in (TaskStatus.WAIT, TaskStatus.PROCESSING) and not (
            self.task.cancel_requested)


def task_view(task: Task, steps: list[Step]) -> TaskView:
    return TaskView(
        task=task, name=bisection_view.task_name(task),
        status=bisection_view.status_label(task), phase=dashboard_phase.phase(task, steps),
        testing=dashboard_phase.testing_now(task),
        progress=bisection_view.progress(task, steps),
        percent=bisection_view.progress_percent(task, steps),
        last=bisection_view.last_tested(steps), range=bisection_view.range_text(task, steps),
        result=bisection_view.result_summary(task), created=format_time(task.created_at),
        started=format_time(task.start_time),
        run_time=format_duration(run_seconds(task.start_time, task.end_time)))


def _row(view: TaskView) -> dict[str, Any]:
    task = view.task
    return {"link": f"/dashboard/tasks/{task.id}", "name": view.name, "status": view.status,
            "phase": view.phase, "testing": view.testing, "progress": view.progress,
            "result": view.result,
            "priority": task.priority, "started": view.started, "run_time": view.run_time,
            "group": task.group_key, "group_href": _href("/dashboard", {"group": task.group_key})}


async def _rows(state: ProducerState, tasks: list[Task]) -> list[dict[str, Any]]:
    """Rows of the list; only running tasks need their steps (for the phase and progress
    of rows written before the phase was recorded, and the step count)."""
    rows = []
    for task in tasks:
        steps = (await state.repo.steps_of_task(task.id)
                 if task.status is TaskStatus.PROCESSING else [])
        rows.append(_row(task_view(task, steps)))
    return rows


@dataclass(frozen=True)
class Drawing:
    """The picture of a bisection: the strip, the posterior rows under it, and each step's
    phase in words (the timeline's and the rows' labels)."""

    picture: bisection_picture.Picture
    posterior: dashboard_posterior.PosteriorRows
    step_phases: list[str]
    testing_x: int | None  # the strip point of the commit under test now (a retest)


def drawing(task: Task, steps: list[Step]) -> Drawing:
    picture = bisection_picture.build(task, steps)
    phases = dashboard_phase.step_phases(task, steps)
    testing = dashboard_phase.testing_now(task)
    at = {p.commit: p.x for p in picture.points}
    if picture.known_bad:
        at[picture.known_bad] = picture.known_bad_x
    # A commit tested for the first time is not on the strip yet: the summary names it.
    testing_x = at.get(testing) if testing else None
    return Drawing(picture, dashboard_posterior.build(picture, steps, phases), phases,
                   testing_x)


def _cards(counts: dict[str, int]) -> list[dict[str, Any]]:
    statuses = [s.value for s in TaskStatus] + sorted(set(counts) - {s.value for s in TaskStatus})
    return [{"status": status, "count": counts.get(status, 0),
             "css": status if status in _LABELS else "other",
             "href": _href("/dashboard", {"status": status})} for status in statuses]


def _result_items(task: Task) -> list[tuple[str, str]]:
    result = result_of(task)
    items = [(label, str(result[key])) for key, label in (
        ("subject", "Subject"), ("author", "Author"), ("date", "Date")) if result.get(key)]
    verification = task.verification or "-"
    if result.get("verification_detail"):
        verification += f" ({result['verification_detail']})"
    items += [("Confidence", confidence_text(task.confidence)), ("Verification", verification)]
    candidates = result.get("candidates")
    if isinstance(candidates, list) and len(candidates) > 1:
        items.append(("Candidates", " ".join(short(str(c)) for c in candidates[:20])))
    runner_up = result.get("runner_up")
    if isinstance(runner_up, dict) and runner_up.get("commit"):
        probability = runner_up.get("probability")
        chance = confidence_text(probability if isinstance(probability, float) else None)
        items.append(("Runner-up", f"{short(str(runner_up['commit']))} ({chance})"))
    if task.first_bad_id:
        items.append(("First bad job", task.first_bad_id))
    if task.first_result_root:
        items.append(("Result root", task.first_result_root))
    items.append(("HEAD", head_text(result.get("head")) or "not checked"))
    return items


# ---------------------------------------------------------------- list
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


async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/dashboard")


async def dashboard(request: web.Request) -> web.Response:
    state = _state(request)
    query = _query(request)
    counts = await state.repo.count_by_status()
    context: dict[str, Any] = {
        "page_title": "Tasks", "query": query, "status": query.get("status"),
        "cards": _cards(counts), "status_options": [c["status"] for c in _cards(counts)],
        "live": _href("/dashboard/live", dict(query)), "error": None, "older_href": None,
        "newest_href": _href("/dashboard", {k: v for k, v in query.items() if k != "cursor"})}
    try:
        tasks, next_cursor = await _page_of_tasks(state, query)
    except ValidationError as exc:
        return _render(request, "list.html", {**context, "rows": [],
                                              "error": f"{exc.field}: {exc.reason}"}, 422)
    if next_cursor:
        context["older_href"] = _href("/dashboard", {**query, "cursor": next_cursor})
    return _render(request, "list.html", {**context, "rows": await _rows(state, tasks)})


async def dashboard_live(request: web.Request) -> web.Response:
    state = _state(request)
    query = _query(request)
    tasks, _ = await _page_of_tasks(state, query)
    counts = await state.repo.count_by_status()
    return json_response({"final": False, "status": None, "parts": {
        "live-counts": _macro(request, "counts", _cards(counts), query.get("status")),
        "live-rows": _macro(request, "rows", await _rows(state, tasks))}})


# ---------------------------------------------------------------- one task
async def _task_or_none(state: ProducerState, raw_id: str) -> Task | None:
    try:
        return await state.repo.get_task(parse_task_id(raw_id))
    except ValidationError:
        return None


_NOTICES = {"retried": "Retry requested: the task waits for a consumer again.",
            "cancelled": "Cancel requested: a running task stops at its consumer's next "
                         "heartbeat."}


async def task_page(request: web.Request) -> web.Response:
    state = _state(request)
    task = await _task_or_none(state, request.match_info["id"])
    if task is None:
        return _message(request, "Task not found",
                        f"no task with id {request.match_info['id']}", 404)
    steps = await state.repo.steps_of_task(task.id)
    session = _session(request)
    completed = task.status is TaskStatus.COMPLETED
    git_url = task.git_url or ""
    drawn = drawing(task, steps)
    return _render(request, "task.html", {
        "page_title": bisection_view.title(task), "task": task,
        "view": task_view(task, steps), "drawn": drawn, "steps": steps,
        "result": _result_items(task) if completed else None,
        "report": render_report(task, steps) if completed else None,
        "branch": branch_of(task), "repo_link": git_url.startswith(("https://", "http://")),
        "group_href": _href("/dashboard", {"group": task.group_key}),
        "can_act": session is not None and _writes_allowed(request, session),
        "csrf": session.csrf if session else "",
        "notice": _NOTICES.get(request.query.get("done", "")),
        "live": None if task.status.is_final or not task.status.known
        else f"/dashboard/tasks/{task.id}/live",
        "live_status": task.status.value})


async def task_live(request: web.Request) -> web.Response:
    state = _state(request)
    task = await _task_or_none(state, request.match_info["id"])
    if task is None:
        return error_response(404, f"no task with id {request.match_info['id']}", "id")
    steps = await state.repo.steps_of_task(task.id)
    drawn = drawing(task, steps)
    return json_response({
        "status": task.status.value, "final": task.status.is_final or not task.status.known,
        "parts": {"live-summary": _macro(request, "summary", task_view(task, steps)),
                  "live-timeline": _macro(request, "timeline", steps, drawn.step_phases),
                  "live-picture": _macro(request, "picture", drawn)}})


# ---------------------------------------------------------------- sign-in and forms
def _same_origin(request: web.Request) -> bool:
    """A form post from our own pages: its Origin (or Referer) names this host. A request
    with neither is no browser's cross-site form (browsers send Origin on every POST)."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source:
        return True
    return source != "null" and urlsplit(source).netloc == request.host


def _form(raw: bytes) -> dict[str, str]:
    fields = parse_qs(raw.decode("utf-8", errors="replace"), max_num_fields=8)
    return {key: values[0] for key, values in fields.items() if values}


def _local_next(value: str | None) -> str:
    """Where to go after signing in: a dashboard path of ours, never another site."""
    if value and value.startswith("/dashboard") and "//" not in value and "\\" not in value:
        return value
    return "/dashboard"


async def login_form(request: web.Request) -> web.Response:
    return _render(request, "login.html", {
        "page_title": "Sign in", "next_path": _local_next(request.query.get("next")),
        "error": None})


def _writes_allowed(request: web.Request, session: Session) -> bool:
    settings = _state(request).settings
    return session.token in settings.api_tokens


async def login(request: web.Request) -> web.StreamResponse:
    if not _same_origin(request):
        return _message(request, "Sign-in refused", "the form was not sent from this site",
                        403)
    client = request.remote or "unknown"
    wait_s = LOGIN_LIMITER.allow(client)
    if wait_s is not None:
        response = _message(request, "Too many sign-ins",
                            f"too many attempts; try again in {wait_s:.0f} s", 429)
        response.headers["Retry-After"] = str(max(1, round(wait_s)))
        return response
    form = _form(await request.read())  # at most LOGIN_MAX_BODY bytes (the route's limit)
    token = form.get("token", "").strip()
    target = _local_next(form.get("next"))
    if not read_token_ok(request, token or None):
        return _render(request, "login.html", {"page_title": "Sign in", "next_path": target,
                                               "error": "that token is not valid"}, 403)
    SESSIONS.drop(request.cookies.get(SESSION_COOKIE))  # a new id on every sign-in
    session_id, _ = SESSIONS.create(token)
    response = web.HTTPSeeOther(target)
    secure = request.secure or request.headers.get("X-Forwarded-Proto", "") == "https"
    response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="Strict",
                        secure=secure, path="/", max_age=7 * 24 * 3600)
    raise response


async def task_action(request: web.Request) -> web.StreamResponse:
    """Retry or cancel from the task page: a signed-in session with an API token, this
    site's Origin, and the session's CSRF token in the form."""
    action = request.match_info["action"]
    task_id = parse_task_id(request.match_info["id"])
    if not _same_origin(request):
        return _message(request, "Refused", "the form was not sent from this site", 403)
    session = _session(request)
    if session is None:
        raise web.HTTPSeeOther("/dashboard/login?" + urlencode(
            {"next": f"/dashboard/tasks/{task_id}"}))
    if not _writes_allowed(request, session):
        return _message(request, "Refused", "retry and cancel need an API token (signed in "
                                            "with a consumer token)", 403)
    if not csrf_ok(session, _form(await request.read()).get("csrf")):
        return _message(request, "Refused", "the form is stale or not from this site; "
                                            "reload the task page and try again", 403)
    state = _state(request)
    if not state.writer_ready.is_set():
        return _message(request, "Try again", "the producer is starting; retry shortly", 503)
    try:
        if action == "retry":
            await state.writer.retry(task_id)
        else:
            await state.writer.cancel(task_id)
    except TaskNotFound:
        return _message(request, "Task not found", f"no task with id {task_id}", 404)
    except InvalidTransition as exc:
        return _message(request, "Not possible now", str(exc), 409)
    done = "retried" if action == "retry" else "cancelled"
    raise web.HTTPSeeOther(f"/dashboard/tasks/{task_id}?done={done}")


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
          "Sign-in form for the dashboard", query=("next",), responses={200: "Html"}),
    Route("POST", "/dashboard/login", login, Access.OPEN,
          "Sign in with an API token (the cookie holds a session id; same-origin forms only, "
          "rate limited per client)",
          responses={303: "Text", 403: "Html", 429: "Html"}, max_body=LOGIN_MAX_BODY),
    Route("GET", "/dashboard", dashboard, Access.READ,
          "Dashboard: counts by status and the task list (HTML)", query=_QUERY,
          responses={200: "Html", 422: "Html"}),
    Route("GET", "/dashboard/live", dashboard_live, Access.READ,
          "Dashboard: fresh counts and task rows as HTML fragments, for polling",
          query=_QUERY, responses={200: "Object", 422: "Error"}),
    Route("GET", r"/dashboard/tasks/{id:\d+}", task_page, Access.READ,
          "Dashboard: one task with its picture, timeline, result and report (HTML)",
          query=("done",), responses={200: "Html", 404: "Html"}),
    Route("GET", r"/dashboard/tasks/{id:\d+}/live", task_live, Access.READ,
          "Dashboard: a task's progress, picture and timeline as HTML fragments, for polling",
          responses={200: "Object", 404: "Error"}),
    Route("POST", r"/dashboard/tasks/{id:\d+}/{action:retry|cancel}", task_action,
          Access.OPEN,
          "Dashboard form: retry or cancel (a signed-in session with an API token, its CSRF "
          "token, same origin)",
          responses={303: "Text", 403: "Html", 409: "Html"}, max_body=ACTION_MAX_BODY),
    Route("GET", r"/api/v1/tasks/{id:\d+}/report", task_report, Access.READ,
          "The report of a completed task (plain text); 409 while it is not completed",
          responses={200: "Text", 404: "Error", 409: "Error"}),
)
