"""Events: one JSON object a line on stdout, the ``result`` event always last."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

Event = dict[str, Any]
Emit = Callable[[Event], None]

STARTED = "started"
RANGE = "range"
TESTING = "testing"  # a test run starts (its step event comes when it ends)
STEP = "step"
VERDICT = "verdict"
PROGRESS = "progress"
RESULT = "result"


def make_event(name: str, **fields: Any) -> Event:
    return {"event": name, **fields}


class JsonLinesEmitter:
    """Writes each event as one JSON line and flushes, so a reader sees it at once."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout

    def __call__(self, event: Event) -> None:
        self._stream.write(json.dumps(event, separators=(",", ":"), default=str) + "\n")
        self._stream.flush()


def parse_event_line(line: str) -> Event:
    """One line of engine stdout back into an event (what the consumer service does)."""
    event = json.loads(line)
    if not isinstance(event, dict) or "event" not in event:
        raise ValueError(f"not an engine event: {line[:200]!r}")
    return event
