"""Supervised background loops and retry policy.

A transient error inside a loop is the loop's business (log it, back off, go on). A loop whose
task ends with an exception has a bug: the supervisor logs it and sets ``failed`` so the service
stops loudly instead of running without it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter."""

    base_s: float = 0.5
    cap_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5  # each delay is scaled by a random factor in [1 - jitter, 1]
    max_attempts: int = 0  # 0: no limit

    def delay(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based)."""
        raw = min(self.cap_s, self.base_s * self.factor ** max(0, attempt - 1))
        return raw * (1 - self.jitter * random.random())


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; True when stopping."""
    if seconds <= 0:
        return stop.is_set()
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


class Supervisor:
    """Starts named background tasks and notices when one dies."""

    def __init__(self) -> None:
        self.failed = asyncio.Event()
        self.failure: str | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        async def runner() -> None:
            await factory()

        task = asyncio.create_task(runner(), name=name)
        self._tasks[name] = task
        task.add_done_callback(self._on_done)
        return task

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        if exc is not None:
            self.failure = f"{task.get_name()}: {exc!r}"
            log.error("background_task_died", task=task.get_name(), error=repr(exc),
                      exc_info=exc)
            self.failed.set()

    async def stop(self, wait_s: float = 10.0) -> None:
        """Cancel every task and wait for them (loops should also watch a stop event)."""
        self._stopping = True
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=wait_s)
        self._tasks.clear()
