"""HTTP plumbing: JSON errors, bearer tokens, per-route body limits, request metrics."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any
from urllib.parse import urlencode

import structlog
from aiohttp import web

from common.errors import DatabaseUnavailable, ValidationError
from producer.errors import InvalidTransition, NotOwner, TaskNotFound, WriterConflict
from producer.sessions import SESSIONS
from producer.state import STATE_KEY

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Route.max_body: the bytes a route reads at most. Nothing is read before the token check,
# and the read has a deadline (BISECT_BODY_TIMEOUT_S), so a slow or large body from anyone
# costs at most this much memory for at most that long.
DEFAULT_MAX_BODY = 64 * 1024
SERVICE_MAX_BODY = -1  # the service-wide BISECT_MAX_BODY_BYTES (batch submissions)
MAX_JSON_DEPTH = 32


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


class BodyTimeout(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"request body not received within {seconds:g} s")


class Access(Enum):
    OPEN = "open"  # health, metrics, docs
    READ = "read"  # open unless BISECT_OPEN_READS=false
    WRITE = "write"  # an API token
    CONSUMER = "consumer"  # a consumer token
    # compass-ci's write routes: an API token, or none with BISECT_LEGACY_WRITES=open (what
    # compass-ci's own service does; its clients send no token).
    LEGACY_WRITE = "legacy_write"


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status,
                             dumps=lambda d: json.dumps(d, ensure_ascii=False))


def error_response(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return json_response(body, status)


async def read_json(request: web.Request, *, check_text: bool = True) -> Any:
    """The request body as JSON, or a 4xx naming what is wrong with it. ``check_text``
    False leaves lone surrogates for the caller to find per item (a batch answers each item
    on its own)."""
    if request.content_type not in ("application/json", "application/octet-stream", ""):
        raise ValidationError("body", "Content-Type must be application/json")
    raw = await request.read()
    if not raw:
        raise ValidationError("body", "is empty; a JSON object is required")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise ValidationError("body", "is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ValidationError("body", f"is not valid JSON ({exc.msg} at {exc.pos})") from None
    except RecursionError:
        raise ValidationError("body", f"nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise ValidationError("body", f"is not acceptable JSON ({exc})") from None
    _check_json(data, "body", 0, check_text)
    return data


def _no_constant(name: str) -> Any:
    raise ValidationError("body", f"{name} is not a JSON number")


def _check_json(value: Any, field: str, depth: int, check_text: bool = True) -> None:
    """No deeper than MAX_JSON_DEPTH, and only text that is valid Unicode (json accepts a
    lone surrogate escape such as "\\ud800", which no database or encoder takes)."""
    if depth > MAX_JSON_DEPTH:
        raise ValidationError("body", f"nests deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        if check_text:
            _check_text(value, field)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, field, depth + 1, check_text)
    elif isinstance(value, dict):
        for key, item in value.items():
            name = key if depth == 0 else field
            if check_text:
                _check_text(key, name)
            _check_json(item, name, depth + 1, check_text)


def _check_text(text: str, field: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(field, "holds a lone surrogate; not valid Unicode text") from None


async def _with_body(request: web.Request, limit: int, timeout_s: float) -> web.Request:
    """The request with its body read (at most ``limit`` bytes, within ``timeout_s``), so
    handlers' ``read``/``json``/``post`` return the cached bytes."""
    if not request.body_exists:
        return request
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit)
    bounded = request.clone(client_max_size=max(limit, 1))
    try:
        async with asyncio.timeout(timeout_s):
            await bounded.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(limit) from None
    except TimeoutError:
        raise BodyTimeout(timeout_s) from None
    return bounded


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("bearer "):
        return None
    return header[7:].strip() or None


def _token_ok(token: str | None, allowed: frozenset[str]) -> bool:
    if token is None:
        return False
    # Compare against every token in constant time so timing tells nothing.
    return any(hmac.compare_digest(token.encode(), item.encode()) for item in allowed)


# Browsers cannot send a bearer token: the dashboard's sign-in sets this cookie to a session
# id (producer.sessions; the token stays on the server). Only READ routes and the dashboard's
# own CSRF-checked forms accept it.
SESSION_COOKIE = "bisect_session"


def read_token_ok(request: web.Request, token: str | None) -> bool:
    settings = request.app[STATE_KEY].settings
    return _token_ok(token, settings.api_tokens | settings.consumer_tokens)


def guard(access: Access, handler: Handler, max_body: int = DEFAULT_MAX_BODY) -> Handler:
    """Wrap a handler with the token check its access level needs, then the body read within
    the route's limit (``max_body`` bytes, or BISECT_MAX_BODY_BYTES for SERVICE_MAX_BODY)."""

    async def checked(request: web.Request) -> web.StreamResponse:
        settings = request.app[STATE_KEY].settings
        denied = _token_check(request, access)
        if denied is not None:
            return denied
        limit = (settings.max_body_bytes if max_body == SERVICE_MAX_BODY
                 else min(max_body, settings.max_body_bytes))
        return await handler(await _with_body(request, limit, settings.body_timeout_s))

    return checked


def _token_check(request: web.Request, access: Access) -> web.Response | None:
    """None when the request may go on; else the 401/403 answer (or a sign-in redirect)."""
    if access is Access.OPEN:
        return None
    settings = request.app[STATE_KEY].settings
    token = _bearer(request)
    if access is Access.READ and settings.open_reads:
        return None
    if access is Access.LEGACY_WRITE:
        if settings.legacy_writes == "open":
            return None
        if token is None:
            return error_response(
                401, "compass-ci's routes need an API token here (Authorization: Bearer "
                     "<token>); a site whose compass-ci clients send none sets "
                     "BISECT_LEGACY_WRITES=open", "Authorization")
        access = Access.WRITE
    allowed = settings.consumer_tokens if access is Access.CONSUMER else settings.api_tokens
    if access is Access.READ:
        allowed = settings.api_tokens | settings.consumer_tokens
        if token is None:
            session = SESSIONS.get(request.cookies.get(SESSION_COOKIE))
            token = session.token if session is not None else None
        if token is None and request.path.startswith("/dashboard"):
            raise web.HTTPSeeOther("/dashboard/login?" + urlencode(
                {"next": request.path_qs}))
    if token is None:
        return error_response(401, "an Authorization: Bearer token is required",
                              "Authorization")
    if not _token_ok(token, allowed):
        return error_response(403, "the token is not valid for this route", "Authorization")
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes a JSON answer; no stack trace ever reaches a client."""
    try:
        return await handler(request)
    except ValidationError as exc:
        status = 400 if exc.field == "body" else 422
        return error_response(status, exc.reason, exc.field)
    except TaskNotFound as exc:
        return error_response(404, str(exc), "id")
    except (InvalidTransition, NotOwner) as exc:
        return error_response(409, str(exc))
    except DatabaseUnavailable:
        log.warning("request_database_unavailable", path=request.path)
        return error_response(503, "the database is unavailable; retry later")
    except WriterConflict as exc:
        return error_response(503, str(exc))
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[STATE_KEY].settings.max_body_bytes
        return error_response(413, f"request body larger than {limit} bytes", "body")
    except BodyTooLarge as exc:
        return error_response(413, str(exc), "body")
    except BodyTimeout as exc:
        # The rest of the body is not worth waiting for: close the connection.
        response = error_response(408, str(exc), "body")
        response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return error_response(exc.status, exc.reason)
        raise
    except Exception:
        log.exception("request_failed", path=request.path, method=request.method)
        return error_response(500, "internal error; see the producer's log")


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        metrics = request.app[STATE_KEY].metrics
        metrics.requests.labels(request.method, name, str(status)).inc()
        metrics.request_seconds.labels(name).observe(time.perf_counter() - started)
