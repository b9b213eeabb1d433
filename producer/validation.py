"""Parsing and checking of API input: every rule names the field it is about."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from common.errors import ValidationError
from common.models import TaskStatus
from common.urls import check_repo_url

MAX_KEY_LEN = 255
MAX_ERROR_ID_BYTES = 8192
MAX_PRIORITY = 1000
# A submitter's timeout is a wish within the deployment's bound (BISECT_MAX_TASK_TIMEOUT_S on
# the producer); the consumer still applies its own limit when that is smaller.
MAX_TIMEOUT_S = 24 * 3600
MAX_REPO_URL_LEN = 255  # compass-ci's git_url is a key column: 255 characters on MySQL
MAX_BATCH = 1000
MAX_LIST_LIMIT = 1000

_TESTER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A commit-ish git will not take for an option: no leading '-', no spaces or control chars.
_REV = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./^~@{}-]{0,254}$")
_JOB_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")
_URL_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_URL_SPACE = re.compile(r"\s")  # str.isspace, every Unicode space
_STATUS = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$")
_CURSOR = re.compile(r"^(\d{1,19})\.(\d{1,19})$")

SUBMIT_FIELDS = ("bad_job_id", "error_id", "priority", "good_commit", "tester", "timeout",
                 "repo_url", "bad_commit")


@dataclass(frozen=True)
class SubmitRequest:
    bad_job_id: str
    error_id: str
    priority: int = 0
    good_commit: str | None = None
    tester: str | None = None
    timeout: int | None = None
    repo_url: str | None = None
    bad_commit: str | None = None


def _require_object(body: Any, field: str = "body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationError(field, "must be a JSON object")
    return body


def _opt_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(name, f"must be a string, got {type(value).__name__}")
    return value if value != "" else None


def _opt_int(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(name, f"must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValidationError(name, f"must be between {low} and {high}, got {value}")
    return value


def parse_job_id(value: Any, field: str = "bad_job_id") -> str:
    if isinstance(value, bool) or value is None:
        raise ValidationError(field, "is required" if value is None else "must be a string")
    if isinstance(value, int):
        if value <= 0:
            raise ValidationError(field, "must be a positive job id")
        value = str(value)
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string or integer, got {type(value).__name__}")
    if not _JOB_ID.match(value):
        raise ValidationError(field, "must be 1-255 characters of letters, digits, '_.:-'")
    return value


def parse_error_id(value: Any, field: str = "error_id") -> str:
    if value is None:
        raise ValidationError(field, "is required")
    if not isinstance(value, str) or value == "":
        raise ValidationError(field, "must be a non-empty string")
    _unicode(value, field)
    if len(value.encode("utf-8")) > MAX_ERROR_ID_BYTES:
        raise ValidationError(field, f"is longer than {MAX_ERROR_ID_BYTES} bytes")
    if any(ch.isspace() or ord(ch) < 32 for ch in value):
        # compass-ci separates error ids by spaces: an id never contains one.
        raise ValidationError(field, "must not contain whitespace or control characters")
    return value


def _unicode(value: str, field: str) -> None:
    """JSON may carry a lone surrogate ("\\ud800"), which no database takes: a 4xx here."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(field, "holds a lone surrogate; not valid Unicode text") from None


def _rev(body: dict[str, Any], name: str) -> str | None:
    value = _opt_str(body, name)
    if value is not None and not _REV.match(value):
        raise ValidationError(name, "is not a valid git revision")
    return value


def parse_submit(body: Any, repo_url_allow: tuple[str, ...], *,
                 testers: frozenset[str] | None = None,
                 max_timeout_s: int = MAX_TIMEOUT_S) -> SubmitRequest:
    """A submission, checked; ``testers``: the tester names the deployment knows (a task
    for any other would wait forever), None to skip that check."""
    data = _require_object(body)
    unknown = sorted(set(data) - set(SUBMIT_FIELDS))
    if unknown:
        raise ValidationError(unknown[0], "unknown field")
    tester = _opt_str(data, "tester")
    if tester is not None and not _TESTER.match(tester):
        raise ValidationError("tester", "must be a profile name (letters, digits, '_.-', "
                                        "at most 64), never a command")
    if tester is not None and testers is not None and tester not in testers:
        raise ValidationError("tester", f"{tester!r} is not a tester of this deployment "
                                        f"(known: {', '.join(sorted(testers))}; the producer's "
                                        "BISECT_TESTERS lists them)")
    repo_url = _opt_str(data, "repo_url")
    if repo_url is not None:
        _unicode(repo_url, "repo_url")
        if _URL_CONTROL.search(repo_url):
            raise ValidationError("repo_url", "must not contain NUL or control characters")
        if _URL_SPACE.search(repo_url):
            raise ValidationError("repo_url", "must be a URL without spaces")
        # Parsed and allowed by scheme, exact host and a segment-boundary path prefix (never
        # a string prefix); the canonical form is what is stored and fetched.
        repo_url = check_repo_url(repo_url, repo_url_allow, "repo_url")
        if len(repo_url) > MAX_REPO_URL_LEN:
            raise ValidationError("repo_url", f"is longer than {MAX_REPO_URL_LEN} characters")
    return SubmitRequest(
        bad_job_id=parse_job_id(data.get("bad_job_id")),
        error_id=parse_error_id(data.get("error_id")),
        priority=_opt_int(data, "priority", 0, MAX_PRIORITY) or 0,
        good_commit=_rev(data, "good_commit"),
        tester=tester,
        timeout=_opt_int(data, "timeout", 1, max_timeout_s),
        repo_url=repo_url,
        bad_commit=_rev(data, "bad_commit"),
    )


def parse_batch(body: Any) -> list[Any]:
    data = _require_object(body)
    tasks = data.get("tasks")
    if not isinstance(tasks, list):
        raise ValidationError("tasks", "must be a list of task objects")
    if not tasks:
        raise ValidationError("tasks", "must not be empty")
    if len(tasks) > MAX_BATCH:
        raise ValidationError("tasks", f"at most {MAX_BATCH} tasks per batch, got {len(tasks)}")
    return tasks


def parse_task_id(value: str, field: str = "id") -> int:
    if not value.isdigit() or len(value) > 19:
        raise ValidationError(field, "must be a task id (a positive integer)")
    number = int(value)
    if not 0 < number < 2**63:
        raise ValidationError(field, "must be a task id (a positive 63-bit integer)")
    return number


def parse_status(value: str | None) -> TaskStatus | None:
    if value is None or value == "":
        return None
    # Any status a row may hold is listable (another service sharing the table may write its
    # own, e.g. a newer compass-ci's ``verifying``); only its spelling is checked.
    if not _STATUS.match(value):
        names = ", ".join(s.value for s in TaskStatus)
        raise ValidationError("status", f"must be a status word such as {names}")
    return TaskStatus(value)


def parse_limit(value: str | None, default: int = 50) -> int:
    if value is None or value == "":
        return default
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIST_LIMIT:
        raise ValidationError("limit", f"must be an integer from 1 to {MAX_LIST_LIMIT}")
    return int(value)


def parse_cursor(value: str | None) -> tuple[int, int] | None:
    if value is None or value == "":
        return None
    match = _CURSOR.match(value)
    if not match:
        raise ValidationError("cursor", "must be a cursor from a previous page ('N.N')")
    return int(match.group(1)), int(match.group(2))


def format_cursor(created_at: int, task_id: int) -> str:
    return f"{created_at}.{task_id}"


def parse_consumer_id(value: Any) -> str:
    if not isinstance(value, str) or not _JOB_ID.match(value):
        raise ValidationError("consumer_id", "must be 1-255 characters of letters, digits, "
                                             "'_.:-'")
    return value


def parse_testers(value: Any, known: frozenset[str] | None = None) -> list[str]:
    """A claim's tester names; with ``known``, each must be a tester of the deployment."""
    if not isinstance(value, list) or not value or len(value) > 100:
        raise ValidationError("testers", "must be a non-empty list of profile names")
    for item in value:
        if not isinstance(item, str) or not _TESTER.match(item):
            raise ValidationError("testers", f"{item!r} is not a profile name")
        if known is not None and item not in known:
            raise ValidationError("testers", f"{item!r} is not a tester of this deployment "
                                             "(add it to the producer's BISECT_TESTERS)")
    return value


def parse_task_id_list(value: Any, field: str = "task_ids") -> list[int]:
    if not isinstance(value, list) or len(value) > MAX_BATCH:
        raise ValidationError(field, f"must be a list of at most {MAX_BATCH} task ids")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise ValidationError(field, "must hold task ids")
        out.append(parse_task_id(str(item), field))
    return out
