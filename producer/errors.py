"""Errors the producer turns into HTTP answers."""

from __future__ import annotations

from common.errors import BisectError


class ProducerError(BisectError):
    """Base of the producer's own errors."""


class TaskNotFound(ProducerError):
    def __init__(self, task_id: int) -> None:
        super().__init__(f"no task with id {task_id}")
        self.task_id = task_id


class InvalidTransition(ProducerError):
    """The task is not in a state that allows the action (HTTP 409)."""


class NotOwner(ProducerError):
    """A consumer reported on a task it no longer holds (HTTP 409)."""


class WriterConflict(ProducerError):
    """Another producer runs the task-state writer against the same database."""
