"""The schema of what a consumer's ``finish`` may store (issue 15, finding 6 and 7).

compass-ci's result columns are short strings (``key``: 255 characters on MySQL), and the
whole result is kept in the task's JSON column, so each named field is checked for its type
and length, and the whole result for its size: a bad value is a 422 naming the field,
never a 500 from the database, and no result can make a task row megabytes large.
"""

from __future__ import annotations

import json
import math
from typing import Any

from common.errors import ValidationError

# An engine's result is some 20 KB at most (lists capped at 100 items by the consumer), so
# 64 KiB leaves room and keeps a 1,000-row list page under 64 MB even before rows drop it.
MAX_RESULT_BYTES = 64 * 1024
MAX_REASON_CHARS = 4000
MAX_LEASE_CHARS = 128
# The result fields stored in their own (compass-ci) columns: short strings.
KEY_FIELDS = ("bad_commit", "first_bad_id", "first_result_root", "work_dir", "verification")
MAX_KEY_CHARS = 255


def _short_text(result: dict[str, Any], name: str) -> None:
    value = result.get(name)
    if value is None:
        return
    if not isinstance(value, str):
        raise ValidationError(f"result.{name}", f"must be a string, got {type(value).__name__}")
    if len(value) > MAX_KEY_CHARS:
        raise ValidationError(f"result.{name}", f"is longer than {MAX_KEY_CHARS} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValidationError(f"result.{name}", "must not contain control characters")


def parse_result(value: Any) -> dict[str, Any] | None:
    """The ``result`` of a finish, checked; None when absent."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValidationError("result", "must be an object")
    for name in KEY_FIELDS:
        _short_text(value, name)
    confidence = value.get("confidence")
    if confidence is not None:
        if isinstance(confidence, bool) or not isinstance(confidence, int | float):
            raise ValidationError("result.confidence",
                                  f"must be a number, got {type(confidence).__name__}")
        if not math.isfinite(confidence) or not 0 <= confidence <= 1:
            raise ValidationError("result.confidence", "must be between 0 and 1")
    size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    if size > MAX_RESULT_BYTES:
        raise ValidationError("result", f"is {size} bytes as JSON; at most {MAX_RESULT_BYTES}")
    return value


def parse_reason(value: Any) -> str | None:
    """A finish's ``reason``: a string, kept to its first MAX_REASON_CHARS characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError("reason", "must be a string")
    return value[:MAX_REASON_CHARS] or None


def parse_lease(value: Any, field: str = "lease") -> str:
    """The secret a claim handed out with a task."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_LEASE_CHARS:
        raise ValidationError(field, "must be the lease secret the claim answered with")
    return value
