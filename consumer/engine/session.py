"""One engine process: signals become cancellation, every ending becomes a result event.

SIGTERM (or SIGINT) cancels the bisection once; the ``finally`` blocks on the way out kill
the running test's process group and remove the worktrees, then a ``result`` event with
status ``error`` is written. A SIGKILL skips all that: the next run of the same repository
sweeps the leftovers (see ``worktree.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading

import structlog

from common.errors import ValidationError
from consumer.engine.errors import EngineError
from consumer.engine.events import Emit
from consumer.engine.result import BisectResult, error_result
from consumer.engine.runner import run_task
from consumer.engine.search import StrategyFactory
from consumer.engine.spec import TaskSpec
from consumer.engine.testers import Tester

log = structlog.get_logger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def run_engine(
    spec: TaskSpec,
    emit: Emit,
    *,
    tester: Tester | None = None,
    strategy: StrategyFactory | None = None,
    handle_signals: bool = True,
) -> BisectResult:
    """Run the bisection and always emit its ``result`` event last; returns the result."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        log.warning("signal_received", signal=sig.name)
        if not received and task is not None:
            received.append(sig.name)
            task.cancel()  # once: a second signal must not interrupt the cleanup

    installed: list[signal.Signals] = []
    if handle_signals and threading.current_thread() is threading.main_thread():
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    bound = log.bind(task_id=spec.task_id)
    try:
        result = await run_task(spec, emit, tester=tester, strategy=strategy)
    except asyncio.CancelledError:
        if not received or task is None:
            raise
        task.uncancel()
        result = error_result(f"terminated by {received[0]}")
    except ValidationError as exc:
        result = error_result(f"invalid {exc.field}: {exc.reason}")
    except EngineError as exc:
        result = error_result(str(exc))
    except Exception as exc:  # the consumer must get a result line whatever happened
        bound.exception("engine_failed")
        result = error_result(f"internal error: {exc!r}")
    finally:
        for sig in installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    bound.info("bisection_finished", status=result.status.value, first_bad=result.first_bad_commit,
               runs=result.runs, reason=result.reason)
    emit(result.to_event())
    return result
