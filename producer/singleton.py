"""Exactly one producer may run the task-state writer against a database.

The running writer keeps a heartbeat row fresh. A producer that finds another one's fresh
heartbeat waits one staleness period (a producer killed with -9 stops refreshing, so its
successor takes over after that), then refuses to start if it is still being refreshed.
Manticore has no compare-and-swap, so the takeover re-reads its own write after a pause:
two producers started at the same instant both see the later write and one of them stops.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from common.repository import Repository
from producer.errors import WriterConflict

log = structlog.get_logger(__name__)

STATE_NAME = "producer_writer"
STALE_FACTOR = 3.0


class WriterGuard:
    def __init__(self, repo: Repository, instance_id: str, heartbeat_s: float) -> None:
        self._repo = repo
        self.instance_id = instance_id
        self._heartbeat_s = heartbeat_s
        self.stale_after_s = heartbeat_s * STALE_FACTOR + 1.0

    async def _other_fresh_owner(self) -> str | None:
        state = await self._repo.get_state(STATE_NAME)
        if state is None:
            return None
        _, owner, updated_ms = state
        if owner in ("", self.instance_id):
            return None
        age_s = time.time() - updated_ms / 1000
        return owner if age_s < self.stale_after_s else None

    async def acquire(self) -> None:
        """Become the writer, or raise :class:`WriterConflict` naming the other producer."""
        deadline = time.monotonic() + self.stale_after_s + self._heartbeat_s
        while (other := await self._other_fresh_owner()) is not None:
            if time.monotonic() > deadline:
                raise WriterConflict(
                    f"another producer ({other}) is running the task-state writer on this "
                    "database; run exactly one producer (consumers scale, producers do not)")
            log.info("writer_waiting_for_other", other=other)
            await asyncio.sleep(min(0.5, self._heartbeat_s))
        await self._repo.put_state(STATE_NAME, "writer", self.instance_id)
        await asyncio.sleep(min(0.3, self._heartbeat_s / 2))
        await self.check()
        log.info("writer_acquired", instance_id=self.instance_id)

    async def check(self) -> None:
        state = await self._repo.get_state(STATE_NAME)
        if state is None or state[1] != self.instance_id:
            owner = state[1] if state else "nobody"
            raise WriterConflict(f"the task-state writer row now names {owner}, not us: "
                                 "two producers are running; stopping this one")

    async def refresh(self) -> None:
        await self.check()
        await self._repo.put_state(STATE_NAME, "writer", self.instance_id)

    async def release(self) -> None:
        """Let a successor start at once after a clean stop."""
        state = await self._repo.get_state(STATE_NAME)
        if state is not None and state[1] == self.instance_id:
            await self._repo.put_state(STATE_NAME, "released", "")
