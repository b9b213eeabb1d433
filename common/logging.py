"""Structured logging: JSON lines when not on a terminal, readable on one.

Every action logs one event name (``task_claimed``, ``step_finished``) with its ids bound
once (``log = log.bind(task_id=...)``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog

_SECRET_KEYS = frozenset({"token", "authorization", "password", "my_token", "secret"})


def _redact_secrets(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Never let a token reach a log line, whatever a caller bound."""
    for key in list(event_dict):
        if key.lower() in _SECRET_KEYS:
            event_dict[key] = "***"
    return event_dict


class _LossyStream:
    """A log stream whose reader may vanish: when it does (a consumer killed under its
    engine), log lines are dropped instead of raising inside clean-up code."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._broken = False

    def write(self, text: str) -> int:
        if not self._broken:
            try:
                return int(self._stream.write(text))
            except (BrokenPipeError, ValueError, OSError):
                self._broken = True
        return len(text)

    def flush(self) -> None:
        if not self._broken:
            try:
                self._stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                self._broken = True

    def isatty(self) -> bool:
        return bool(getattr(self._stream, "isatty", lambda: False)())


def configure_logging(service: str, level: str | None = None, *, stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger for one process.

    ``BISECT_LOG_FORMAT`` (``json`` or ``console``) overrides the terminal detection;
    ``BISECT_LOG_LEVEL`` the level.
    """
    out = _LossyStream(stream if stream is not None else sys.stderr)
    level_name = (level or os.environ.get("BISECT_LOG_LEVEL", "info")).upper()
    numeric = logging.getLevelNamesMapping().get(level_name, logging.INFO)
    fmt = os.environ.get("BISECT_LOG_FORMAT", "")
    as_json = fmt == "json" or (fmt != "console" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, out)),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=out)
