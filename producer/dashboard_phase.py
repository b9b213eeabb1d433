"""What a running task is doing now, in words, from what the consumer records: the engine's
phase and the commit under test (``Task.phase``, ``Task.current_commit``, written when each
test starts) and each step's phase (``Step.phase``).

Rows written before these were recorded have them empty: the words then fall back to what
``bisection_view`` infers from the steps (and, for a finished task, its result's ``tested``).
"""

from __future__ import annotations

from common.models import Step, Task, TaskStatus
from producer import bisection_view

# The engine's phase names (docs/engine-protocol.md, ``testing`` and ``step`` events) in words;
# ``check_head`` is accepted beside the protocol's ``head``.
PHASE_WORDS: dict[str, str] = {**bisection_view.PHASE_WORDS, "check_head": "checking HEAD"}


def phase_words(name: str) -> str:
    """An engine phase in words; a name we do not know is shown as it is (escaped by the
    templates), so a newer engine's phase is still readable."""
    return PHASE_WORDS.get(name, name.replace("_", " "))


def _recorded(task: Task) -> bool:
    """The recorded phase and commit describe the task only while it is processing: a claim
    clears them, a finish does not."""
    return task.status is TaskStatus.PROCESSING


def phase(task: Task, steps: list[Step]) -> str:
    """The phase in words: the recorded one while processing, else the inferred one."""
    if _recorded(task) and task.phase:
        words = phase_words(task.phase)
        if task.phase == "search" and task.candidates_left > 1:
            words += f", {task.candidates_left} candidates left"
        return words
    return bisection_view.phase(task, steps)


def testing_now(task: Task) -> str | None:
    """The full hash of the commit under test now, when the consumer recorded one."""
    if _recorded(task) and task.current_commit:
        return task.current_commit
    return None


def step_phases(task: Task, steps: list[Step]) -> list[str]:
    """Each step's phase in words, aligned with ``steps``: the recorded one, else the phase a
    finished result gives the commit (where it was first tested), else ``-``."""
    from_result = bisection_view.tested_phases(task)
    words = []
    for step in steps:
        name = step.phase or from_result.get(step.commit) or ""
        words.append(phase_words(name) if name else "-")
    return words
