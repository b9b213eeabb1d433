"""The producer's HTTP API: one table of routes, from which the router and the OpenAPI
document are both built (so the document cannot drift from the code)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from common.errors import ValidationError
from common.models import FinishOutcome, Task
from common.repository import TaskFilter
from common.urls import canonical_repo_url, redact_url
from producer.errors import WriterConflict
from producer.middleware import (
    DEFAULT_MAX_BODY,
    SERVICE_MAX_BODY,
    Access,
    Handler,
    error_response,
    json_response,
    read_json,
)
from producer.results import MAX_RESULT_BYTES, parse_lease, parse_reason, parse_result
from producer.state import STATE_KEY, ProducerState
from producer.submission import new_task_from_request, new_tasks_from_requests
from producer.validation import (
    MAX_BATCH,
    SubmitRequest,
    format_cursor,
    parse_batch,
    parse_consumer_id,
    parse_cursor,
    parse_limit,
    parse_status,
    parse_submit,
    parse_task_id,
    parse_testers,
)
from producer.writer import SubmitResult

log = structlog.get_logger(__name__)

@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    access: Access
    summary: str
    query: tuple[str, ...] = ()
    body: str | None = None  # name of a schema in producer.openapi.SCHEMAS
    responses: dict[int, str] = field(default_factory=dict)
    # The most body bytes the route reads (after its token check); SERVICE_MAX_BODY:
    # BISECT_MAX_BODY_BYTES. A larger body is a 413 before it is read.
    max_body: int = DEFAULT_MAX_BODY


MAX_CLAIM_WAIT_S = 30


def _state(request: web.Request) -> ProducerState:
    return request.app[STATE_KEY]


async def _writer_state(request: web.Request) -> ProducerState:
    """The state, once this process holds the writer role (503 before)."""
    state = _state(request)
    if not state.writer_ready.is_set():
        raise WriterConflict("the producer is starting (waiting for the database or for "
                             "another producer to stop); retry shortly")
    return state


def task_json(task: Task) -> dict[str, Any]:
    return task.to_json()


def task_row_json(task: Task) -> dict[str, Any]:
    """A task as list rows show it: without the bulky ``result`` a finish stored (up to
    64 KiB); ``GET /api/v1/tasks/{id}`` has it."""
    data = task.to_json()
    if "result" in task.extra:
        data["extra"] = {k: v for k, v in task.extra.items() if k != "result"}
    return data


def _parse_submit(state: ProducerState, body: Any) -> SubmitRequest:
    return parse_submit(body, state.settings.repo_url_allow, testers=state.settings.testers,
                        max_timeout_s=state.settings.max_task_timeout_s)


# ---------------------------------------------------------------- submit
async def _submit_one(state: ProducerState, body: Any) -> SubmitResult:
    request = _parse_submit(state, body)
    new = await new_task_from_request(request, state.repo, state.settings.default_tester,
                                      state.settings.repo_url_allow)
    (result,) = await state.writer.submit([new])
    if result.created:
        state.metrics.tasks_created.labels("api").inc()
    return result


async def submit_task(request: web.Request) -> web.Response:
    state = await _writer_state(request)
    result = await _submit_one(state, await read_json(request))
    return json_response({"task": task_json(result.task), "created": result.created},
                         201 if result.created else 200)


async def submit_batch(request: web.Request) -> web.Response:
    state = await _writer_state(request)
    items = parse_batch(await read_json(request, check_text=False))
    answers: list[dict[str, Any]] = [{} for _ in items]
    parsed: list[tuple[int, SubmitRequest]] = []
    for index, item in enumerate(items):
        try:
            parsed.append((index, _parse_submit(state, item)))
        except ValidationError as exc:
            answers[index] = {"index": index, "status": 422, "field": exc.field,
                              "error": exc.reason}
    built = await new_tasks_from_requests([request for _, request in parsed], state.repo,
                                          state.settings.default_tester,
                                          state.settings.repo_url_allow)
    valid = []
    for (index, _), new in zip(parsed, built, strict=True):
        if isinstance(new, ValidationError):
            answers[index] = {"index": index, "status": 422, "field": new.field,
                              "error": new.reason}
        else:
            valid.append((index, new))
    # An item the database cannot store fails alone (422 for it), never its neighbours.
    results = await state.writer.submit_each([new for _, new in valid]) if valid else []
    created = stored = 0
    for (index, _), result in zip(valid, results, strict=True):
        if isinstance(result, ValidationError):
            answers[index] = {"index": index, "status": 422, "field": result.field,
                              "error": result.reason}
            continue
        stored += 1
        created += result.created
        answers[index] = {"index": index, "status": 201 if result.created else 200,
                          "created": result.created, "task_id": str(result.task.id)}
    state.metrics.tasks_created.labels("api").inc(created)
    return json_response({"results": answers, "created": created,
                          "existing": stored - created, "invalid": len(items) - stored})


# ---------------------------------------------------------------- read
def _filter_from_query(request: web.Request) -> TaskFilter:
    query = request.query
    allowed = {"status", "error_id", "bad_job_id", "suite", "group", "limit", "cursor"}
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise ValidationError(unknown[0], "unknown query parameter")
    return TaskFilter(
        status=parse_status(query.get("status")),
        error_id=query.get("error_id") or None,
        bad_job_id=query.get("bad_job_id") or None,
        suite=query.get("suite") or None,
        group_key=query.get("group") or None,
    )


async def list_tasks(request: web.Request) -> web.Response:
    state = _state(request)
    task_filter = _filter_from_query(request)
    limit = parse_limit(request.query.get("limit"))
    rows = await state.repo.list_tasks(task_filter, limit=limit,
                                       before=parse_cursor(request.query.get("cursor")))
    tasks = [t for t in rows if task_filter.matches_exactly(t)]
    next_cursor = format_cursor(rows[-1].created_at, rows[-1].id) if len(rows) == limit else None
    return json_response({"tasks": [task_row_json(t) for t in tasks],
                          "next_cursor": next_cursor})


async def get_task(request: web.Request) -> web.Response:
    state = _state(request)
    task_id = parse_task_id(request.match_info["id"])
    task = await state.repo.get_task(task_id)
    if task is None:
        return error_response(404, f"no task with id {task_id}", "id")
    steps = await state.repo.steps_of_task(task_id)
    return json_response({"task": task_json(task), "steps": [s.to_json() for s in steps]})


async def count_tasks(request: web.Request) -> web.Response:
    counts = await _state(request).repo.count_by_status()
    return json_response({"counts": counts, "total": sum(counts.values())})


# ---------------------------------------------------------------- user actions
async def retry_task(request: web.Request) -> web.Response:
    state = await _writer_state(request)
    task_id = parse_task_id(request.match_info["id"])
    body = await read_json(request) if request.body_exists else {}
    fresh = _object(body).get("fresh", False) if body is not None else False
    if not isinstance(fresh, bool):
        raise ValidationError("fresh", "must be true or false")
    task = await state.writer.retry(task_id, fresh=fresh)
    return json_response({"task": task_json(task)})


async def forget_verdicts(request: web.Request) -> web.Response:
    """Forget the stored verdicts of one repository and error id."""
    state = await _writer_state(request)
    repo_url = request.query.get("repo_url") or ""
    error_id = request.query.get("error_id") or ""
    for name, value in (("repo_url", repo_url), ("error_id", error_id)):
        if not value:
            raise ValidationError(name, "is required")
    forgotten = await state.repo.forget_verdicts(canonical_repo_url(repo_url), error_id)
    log.info("verdicts_forgotten", repo_url=redact_url(repo_url), error_id=error_id,
             count=forgotten)
    return json_response({"forgotten": forgotten})


async def cancel_task(request: web.Request) -> web.Response:
    state = await _writer_state(request)
    task = await state.writer.cancel(parse_task_id(request.match_info["id"]))
    return json_response({"task": task_json(task)})


async def delete_failed(request: web.Request) -> web.Response:
    state = await _writer_state(request)
    return json_response({"deleted": await state.writer.delete_failed()})


# ---------------------------------------------------------------- consumer protocol
def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    return body


async def consumer_claim(request: web.Request) -> web.Response:
    state = await _writer_state(request)
    body = _object(await read_json(request))
    consumer_id = parse_consumer_id(body.get("consumer_id"))
    slots = body.get("slots")
    if isinstance(slots, bool) or not isinstance(slots, int) or not 0 <= slots <= 1000:
        raise ValidationError("slots", "must be an integer from 0 to 1000")
    testers = parse_testers(body.get("testers"), state.settings.testers)
    wait_s = body.get("wait_s", 0)
    if isinstance(wait_s, bool) or not isinstance(wait_s, int | float) or not (
            0 <= wait_s <= MAX_CLAIM_WAIT_S):
        raise ValidationError("wait_s", f"must be a number of seconds from 0 to "
                                        f"{MAX_CLAIM_WAIT_S}")
    # Beyond BISECT_MAX_LONG_POLLS waiting claims, a claim answers at once ("long_poll":
    # false) and the consumer sleeps its own poll interval before the next.
    long_poll = wait_s > 0 and not state.stop.is_set() and state.writer.long_poll_free()
    if long_poll:
        tasks = await state.writer.claim_waiting(consumer_id, slots, testers, float(wait_s))
    else:
        tasks = await state.writer.claim(consumer_id, slots, testers)
    state.metrics.claims.inc(len(tasks))
    return json_response({
        # "lease": the secret heartbeat and finish must present for this task (never logged).
        "tasks": [{**task_json(t), "claim": t.claims, "lease": state.writer.lease_of(t)}
                  for t in tasks],
        "lease_seconds": state.writer.lease_s,
        "long_poll": long_poll,
    })


async def consumer_heartbeat(request: web.Request) -> web.Response:
    state = await _writer_state(request)
    body = _object(await read_json(request))
    consumer_id = parse_consumer_id(body.get("consumer_id"))
    answer = await state.writer.heartbeat(consumer_id, _parse_leases(body.get("leases")))
    return json_response({
        "renewed": [str(t) for t in answer.renewed],
        "stop": [{"task_id": str(t), "reason": r.value} for t, r in answer.stop],
        "lease_seconds": state.writer.lease_s,
    })


async def consumer_finish(request: web.Request) -> web.Response:
    state = await _writer_state(request)
    body = _object(await read_json(request))
    consumer_id = parse_consumer_id(body.get("consumer_id"))
    task_id = parse_task_id(str(body.get("task_id", "")), "task_id")
    try:
        outcome = FinishOutcome(str(body.get("outcome")))
    except ValueError:
        raise ValidationError("outcome", "must be completed, failed or released") from None
    lease = parse_lease(body.get("lease"))
    reason = parse_reason(body.get("reason"))
    result = parse_result(body.get("result"))
    task = await state.writer.finish(consumer_id, task_id, outcome, lease=lease,
                                     reason=reason, result=result)
    return json_response({"status": task.status.value, "task": task_json(task)})


def _parse_leases(value: Any) -> dict[int, str]:
    """A heartbeat's ``{"task id": "lease secret"}``, one entry per task held."""
    if not isinstance(value, dict) or len(value) > MAX_BATCH:
        raise ValidationError("leases", f"must map at most {MAX_BATCH} task ids to the lease "
                                        "secrets their claims answered with")
    return {parse_task_id(str(key), "leases"): parse_lease(secret, "leases")
            for key, secret in value.items()}


# ---------------------------------------------------------------- health
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    state = _state(request)
    try:
        await state.db.ping()
    except Exception as exc:
        # The exception's text can name hosts, ports and users: the log has it, not the answer.
        log.warning("readyz_database_unreachable", error=str(exc))
        return json_response({"status": "unready", "database": "unreachable"}, 503)
    if not state.writer_ready.is_set():
        return json_response({"status": "unready", "writer": "not acquired yet"}, 503)
    return json_response({"status": "ready", "database": "ok", "writer": "ok"})


async def metrics(request: web.Request) -> web.Response:
    state = _state(request)
    state.metrics.long_polls.set(state.writer.long_polls_waiting)
    try:
        for status, count in (await state.repo.count_by_status()).items():
            state.metrics.tasks.labels(status).set(count)
    except Exception:  # a scrape must still answer with what is in memory
        state.metrics.tasks.clear()
    body = generate_latest(state.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_json(request: web.Request) -> web.Response:
    from producer.openapi import build_document

    return json_response(build_document(request.app))


_LIST_QUERY = ("status", "error_id", "bad_job_id", "suite", "group", "limit", "cursor")
_TASK_RESPONSES = {200: "TaskWithSteps", 404: "Error"}

ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/v1/tasks", submit_task, Access.WRITE,
          "Submit a bisection task (existing pair: 200 with that task)", body="SubmitTask",
          responses={201: "TaskCreated", 200: "TaskCreated", 422: "Error"}),
    Route("POST", "/api/v1/tasks/batch", submit_batch, Access.WRITE,
          "Submit up to 1,000 tasks, answered per task", body="SubmitBatch",
          responses={200: "BatchResult", 400: "Error"}, max_body=SERVICE_MAX_BODY),
    Route("GET", "/api/v1/tasks", list_tasks, Access.READ,
          "List tasks, newest first, paged by cursor", query=_LIST_QUERY,
          responses={200: "TaskList", 422: "Error"}),
    Route("GET", "/api/v1/tasks/counts", count_tasks, Access.READ, "Task counts by status",
          responses={200: "Counts"}),
    Route("GET", r"/api/v1/tasks/{id:\d+}", get_task, Access.READ, "One task with its steps",
          responses=_TASK_RESPONSES),
    Route("POST", r"/api/v1/tasks/{id:\d+}/retry", retry_task, Access.WRITE,
          "Put a failed or cancelled task back to waiting (attempts kept); body "
          "{\"fresh\": true}: reuse no stored verdict",
          responses={200: "TaskCreated", 404: "Error", 409: "Error"}),
    Route("POST", r"/api/v1/tasks/{id:\d+}/cancel", cancel_task, Access.WRITE,
          "Cancel a waiting task, or tell the consumer running it to stop",
          responses={200: "TaskCreated", 404: "Error", 409: "Error"}),
    Route("DELETE", "/api/v1/verdicts", forget_verdicts, Access.WRITE,
          "Forget the stored verdicts of a repository and error id (the next bisection "
          "tests every commit again)", query=("repo_url", "error_id"),
          responses={200: "Forgotten", 422: "Error"}),
    Route("DELETE", "/api/v1/tasks/failed", delete_failed, Access.WRITE,
          "Delete every failed task and its steps", responses={200: "Deleted"}),
    # The consumer protocol (docs/consumer-protocol.md).
    Route("POST", "/api/v1/internal/claim", consumer_claim, Access.CONSUMER,
          "Consumer: claim up to `slots` waiting tasks with a lease", body="Claim",
          responses={200: "ClaimResult"}),
    Route("POST", "/api/v1/internal/heartbeat", consumer_heartbeat, Access.CONSUMER,
          "Consumer: renew leases; lists tasks to stop", body="Heartbeat",
          responses={200: "HeartbeatResult"}, max_body=256 * 1024),
    Route("POST", "/api/v1/internal/finish", consumer_finish, Access.CONSUMER,
          "Consumer: report a task completed, failed or released", body="Finish",
          responses={200: "TaskCreated", 409: "Error"}, max_body=2 * MAX_RESULT_BYTES),
    Route("GET", "/healthz", healthz, Access.OPEN, "Liveness", responses={200: "Status"}),
    Route("GET", "/readyz", readyz, Access.OPEN, "Readiness (database reachable, writer held)",
          responses={200: "Status", 503: "Status"}),
    Route("GET", "/metrics", metrics, Access.READ,
          "Prometheus metrics (needs a token when reads are closed)", responses={200: "Text"}),
    Route("GET", "/api/v1/openapi.json", openapi_json, Access.OPEN,
          "This OpenAPI document", responses={200: "Object"}),
)

