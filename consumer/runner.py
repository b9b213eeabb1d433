"""One bisection: the engine as a subprocess in its own process group.

The spec goes in on stdin; JSON-line events come out on stdout and are recorded as they
arrive; stderr (the engine's logs) is copied to this process's log, bounded. A timeout or a
stop order kills the whole process group (SIGTERM, then SIGKILL), so the engine's test runs
die with it. :func:`decide` turns what happened into the ``finish`` call for the producer.

The engine runs untrusted tests, so it gets no secret: its environment is built from an
allow-list (:func:`engine_environment`), the compass account reaches it inside the spec, it
gets SIGTERM when the consumer dies (parent-death signal, even by SIGKILL), and every event
it sends is scrubbed of the consumer's secrets (``consumer/redact.py``) before it is stored.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from common.errors import BisectError
from common.models import FinishOutcome, StoredVerdict
from consumer.client import ClaimedTask
from consumer.engine.sandbox import PASS_ENV_ENV, parse_pass_env, set_parent_death_signal
from consumer.engine.spec import DEFAULT_DETERMINISTIC_RUN_BUDGET
from consumer.profiles import TesterProfile
from consumer.recorder import InvalidEvent, Recorder
from consumer.redact import Scrubber, secrets_in
from consumer.settings import ConsumerSettings, TimeoutAction

log = structlog.get_logger(__name__)

MAX_LINE_BYTES = 1024 * 1024  # a longer stdout "line" is dropped, not buffered
READ_CHUNK = 64 * 1024
MAX_STDERR_LINES = 5000  # per run; later lines are counted, not logged
MAX_STDERR_CHARS = 2000
MAX_GARBAGE_LOGS = 20
PIPE_DRAIN_S = 5.0  # after the engine exits, how long its pipes may stay open
MAX_LIST_ITEMS = 100

STOP_SHUTDOWN = "shutdown"  # the consumer is stopping: release the task
STOP_CANCELLED = "cancelled"  # the producer says the task was cancelled

# What the engine inherits from the consumer: how to run Python and reach git servers, how
# to log, and how to sandbox tests. Tokens, the database URL and everything else stay here.
ENGINE_ENV_ALLOW = (
    "PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV",
    "PYTHONUNBUFFERED", "BISECT_LOG_LEVEL", "BISECT_LOG_FORMAT", "SSH_AUTH_SOCK",
    "GIT_SSH_COMMAND", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
    "NO_PROXY", "BISECT_SANDBOX_USER", "BISECT_CACHE_MAX_GB", PASS_ENV_ENV,
)
# The consumer's default sandbox (an engine without BISECT_SANDBOX runs tests unsandboxed,
# as bisect-run does).
CONSUMER_SANDBOX_DEFAULT = "auto"


def engine_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The engine's whole environment, from the consumer's (``os.environ`` by default)."""
    source = os.environ if environ is None else environ
    env = {k: source[k] for k in ENGINE_ENV_ALLOW if k in source}
    for name in parse_pass_env(source.get(PASS_ENV_ENV, "")):
        if name in source:
            env[name] = source[name]
    env["BISECT_SANDBOX"] = source.get("BISECT_SANDBOX") or CONSUMER_SANDBOX_DEFAULT
    env.setdefault("PATH", os.defpath)
    return env


def task_timeout_s(task_timeout: float | None, consumer_timeout_s: float) -> float:
    """How long a bisection may run here: the task's own limit, never more than this
    consumer's ``BISECT_TASK_TIMEOUT_S`` (a submitter cannot hold a slot for a week)."""
    if task_timeout is None or task_timeout <= 0:
        return consumer_timeout_s
    return min(float(task_timeout), consumer_timeout_s)


# The engine's time budget ends this long before the consumer kills it: time for a test
# that runs longer than the ones before it, and for the answer to be written.
ENGINE_TIME_MARGIN_FRACTION = 0.05
ENGINE_TIME_MARGIN_MIN_S = 60.0


def engine_time_budget(asked: Any, timeout_s: float) -> Any:
    """The ``limits.time_budget_s`` of a bisection the consumer kills after ``timeout_s``:
    the task's own, if it asks less, else the timeout less a margin, so that the engine
    answers with what its runs can say (``undecided``, the likely candidates) instead of
    being killed with nothing. A value that is not a positive number is passed on for the
    engine to reject by name."""
    margin = max(ENGINE_TIME_MARGIN_MIN_S, ENGINE_TIME_MARGIN_FRACTION * timeout_s)
    limit = max(timeout_s - margin, timeout_s / 2)
    if asked is None:
        return limit
    if isinstance(asked, int | float) and not isinstance(asked, bool) and asked > 0:
        return min(float(asked), limit)
    return asked


def run_budget(asked: Any, tester_budget: int) -> Any:
    """The runs a bisection may spend: the tester's budget, or less if the task asks for
    less (a submitter cannot spend more of the site's CI than the tester allows). A value
    that is not a positive integer is passed on for the engine to reject by name."""
    if asked is None:
        return tester_budget
    if isinstance(asked, int) and not isinstance(asked, bool) and asked >= 1:
        return min(asked, tester_budget)
    return asked


class SpecError(BisectError):
    """The task cannot be turned into an engine spec (e.g. no repository URL)."""


def build_spec(task: ClaimedTask, profile: TesterProfile, *, settings: ConsumerSettings,
               known_verdicts: Sequence[StoredVerdict], work_dir: str) -> dict[str, Any]:
    """The engine's spec for ``task`` (docs/engine-protocol.md)."""
    if not task.git_url:
        raise SpecError("task has no git_url")
    if not task.known_bad_commit:
        raise SpecError("task has no known_bad_commit")
    raw_limits = task.extra.get("limits")
    limits: dict[str, Any] = dict(raw_limits) if isinstance(raw_limits, dict) else {}
    if profile.slots is not None:
        limits.setdefault("slots", profile.slots)
    if profile.run_budget is not None:
        asked = limits.get("run_budget")
        if asked is None and limits.get("flaky") is False:
            asked = DEFAULT_DETERMINISTIC_RUN_BUDGET  # git's search keeps its own cap
        limits["run_budget"] = run_budget(asked, profile.run_budget)
    if profile.reproduce_runs is not None:
        limits.setdefault("reproduce_runs", profile.reproduce_runs)
    if settings.timeout_action is TimeoutAction.FAIL:
        # A site that retries a timed-out task (BISECT_TIMEOUT_ACTION=retry) lets a long
        # bisection go on over several attempts: no time budget then.
        limits["time_budget_s"] = engine_time_budget(
            limits.get("time_budget_s"), task_timeout_s(task.timeout, settings.task_timeout_s))
    tester = profile.tester_spec()
    spec: dict[str, Any] = {
        "task_id": task.id,
        "repo_url": task.git_url,
        "bad_commit": task.known_bad_commit,
        "good_commit": task.good_commit,
        "error_id": task.error_id or None,
        "tester": tester,
        "limits": limits,
        "known_verdicts": [
            {"commit": v.commit, "verdict": v.verdict.value, "runs": v.runs,
             "bad_runs": v.bad_runs, "job_id": v.job_id}
            for v in known_verdicts],
        "cache_dir": settings.cache_dir,
        "work_dir": work_dir,
    }
    if profile.kind == "compass":
        # A compass tester reruns the bad job at other commits: it needs to know which job,
        # where to submit and where the jobs table is. The account and its token travel in
        # the spec (stdin), never in the engine's environment, where a test could read them.
        for key, value in (("my_account", settings.compass_account),
                           ("my_email", settings.compass_email),
                           ("my_name", settings.compass_name),
                           ("my_token", settings.compass_token)):
            if value:
                tester.setdefault(key, value)
        spec["bad_job_id"] = task.bad_job_id
        spec["db_url"] = settings.db_url.to_url()
        spec["scheduler_url"] = settings.scheduler_url
    return spec


@dataclass(frozen=True)
class RunResult:
    """What happened to one engine process."""

    result: dict[str, Any] | None
    exit_code: int | None
    stop_reason: str | None = None
    timed_out: bool = False
    last_stderr: str = ""
    duration_s: float = 0.0


@dataclass(frozen=True)
class Finish:
    """The ``finish`` call to make; ``outcome`` None: the producer told us to stop, say
    nothing."""

    outcome: FinishOutcome | None
    reason: str = ""
    result: dict[str, Any] = field(default_factory=dict)


def _cap(value: Any) -> Any:
    return value[:MAX_LIST_ITEMS] if isinstance(value, list) else value


def _failure_reason(result: dict[str, Any]) -> str:
    status = str(result.get("status"))
    reason = result.get("reason")
    if isinstance(reason, str) and reason:
        return reason if reason.startswith(status) else f"{status}: {reason}"
    candidates = result.get("candidates")
    if status == "ambiguous" and isinstance(candidates, list):
        shown = " ".join(str(c)[:12] for c in candidates[:5])
        return f"ambiguous: {len(candidates)} candidates {shown}".rstrip()
    return status


def completed_result(result: dict[str, Any], work_dir: str,
                     test_command: Any = None) -> dict[str, Any]:
    """compass-ci's fields of a found culprit, plus what else is worth keeping (and the
    profile's test command, so that the report can say how to reproduce)."""
    verification = result.get("verification")
    if isinstance(verification, dict):
        held = "held" if verification.get("held") else "not_held"
        detail = verification.get("detail")
    else:
        held, detail = "skipped", None
    out: dict[str, Any] = {
        "bad_commit": result.get("first_bad_commit"),
        "first_bad_id": result.get("first_bad_job_id") or "",
        "first_result_root": result.get("first_result_root") or "",
        "work_dir": work_dir,
        "confidence": result.get("confidence"),
        "verification": held,
    }
    if detail:
        out["verification_detail"] = str(detail)[:1000]
    for key in ("subject", "author", "date", "candidates", "runs", "head", "tested",
                "runner_up"):
        if result.get(key) is not None:
            out[key] = _cap(result[key])
    if isinstance(test_command, str) or (isinstance(test_command, list) and all(
            isinstance(arg, str) for arg in test_command)):
        out["test_command"] = test_command
    return out


def decide(run: RunResult, *, work_dir: str, timeout_action: TimeoutAction,
           test_command: Any = None) -> Finish:
    """The producer-facing outcome of a run."""
    if run.stop_reason == STOP_CANCELLED:
        # Reported at once so the producer marks it cancelled now, not when the lease ends.
        return Finish(FinishOutcome.RELEASED, STOP_CANCELLED)
    if run.stop_reason is not None and run.stop_reason != STOP_SHUTDOWN:
        return Finish(None, run.stop_reason)
    # An engine we terminated (shutdown, timeout) still writes a result: status "error",
    # "terminated by SIGTERM". That is our doing, not the task's: release or time out below.
    killed = run.timed_out or run.stop_reason == STOP_SHUTDOWN
    if run.result is not None and not (killed and run.result.get("status") == "error"):
        if run.result.get("status") == "found":
            return Finish(FinishOutcome.COMPLETED, "",
                          completed_result(run.result, work_dir, test_command))
        keep = {k: _cap(run.result[k]) for k in ("candidates", "runs", "tested", "runner_up")
                if run.result.get(k) is not None}
        return Finish(FinishOutcome.FAILED, _failure_reason(run.result), keep)
    if run.stop_reason == STOP_SHUTDOWN:
        return Finish(FinishOutcome.RELEASED, "consumer shutting down")
    if run.timed_out:
        outcome = (FinishOutcome.RELEASED if timeout_action is TimeoutAction.RETRY
                   else FinishOutcome.FAILED)
        return Finish(outcome, "timeout")
    reason = f"engine exited {run.exit_code} without a result"
    if run.last_stderr:
        reason += f": {run.last_stderr}"
    return Finish(FinishOutcome.FAILED, reason[:1000])


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class BisectionRun:
    """Runs the engine once. :meth:`stop` may be called at any time, from any task."""

    def __init__(self, command: Sequence[str], spec: dict[str, Any], recorder: Recorder, *,
                 timeout_s: float, kill_grace_s: float, work_dir: str | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self._command = list(command)
        self._spec = spec
        source = os.environ if environ is None else environ
        self._env = engine_environment(source)
        self._scrub = Scrubber(secrets_in(source, spec))
        self._recorder = recorder
        self._timeout_s = timeout_s
        self._kill_grace_s = kill_grace_s
        self._work_dir = work_dir
        # The engine starts in the work root: nothing of the consumer's own folder is where
        # a test's relative path could find it.
        self._engine_cwd = os.path.dirname(os.path.abspath(work_dir)) if work_dir else None
        self._stop = asyncio.Event()
        self.stop_reason: str | None = None
        self.pid: int | None = None
        self._last_stderr = ""
        self._stderr_lines = 0
        self._garbage = 0
        self.log = log.bind(task_id=recorder.scope.task_id, attempt=recorder.scope.attempt)

    def stop(self, reason: str) -> None:
        """Ask the run to kill its process group and return; the first reason wins."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    async def run(self) -> RunResult:
        started = time.monotonic()
        if self._stop.is_set():
            return RunResult(None, None, stop_reason=self.stop_reason)
        cwd = self._engine_cwd
        if cwd is not None:
            await asyncio.to_thread(os.makedirs, cwd, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            *self._command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, env=self._env, cwd=cwd,
            # SIGTERM when the consumer dies, even by SIGKILL: the engine then stops its
            # test and removes its worktrees instead of running on for hours.
            preexec_fn=functools.partial(set_parent_death_signal, signal.SIGTERM))
        self.pid = proc.pid
        self.log.info("engine_started", pid=proc.pid)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        readers = [asyncio.create_task(self._read_stdout(proc.stdout)),
                   asyncio.create_task(self._read_stderr(proc.stderr))]
        feeder = asyncio.create_task(self._feed(proc.stdin))
        body = asyncio.create_task(self._until_exit(proc, readers))
        stop_wait = asyncio.create_task(self._stop.wait())
        timed_out = False
        try:
            done, _ = await asyncio.wait({body, stop_wait}, timeout=self._timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if body not in done:
                timed_out = stop_wait not in done
                if timed_out:
                    self.log.warning("task_timeout", timeout_s=self._timeout_s)
                else:
                    self.log.info("engine_stopping", reason=self.stop_reason)
                await self._kill(proc)
                try:
                    await asyncio.wait_for(body, PIPE_DRAIN_S + self._kill_grace_s)
                except TimeoutError:
                    self.log.warning("engine_pipes_stuck")
            else:
                body.result()  # a reader's bug surfaces here
        finally:
            stop_wait.cancel()
            for task in (feeder, body, *readers):
                task.cancel()
            # SIGKILL whatever is left of the group: the engine when we are being
            # cancelled, or test runs it left behind.
            _signal_group(proc.pid, signal.SIGKILL)
            if proc.returncode is None:
                await proc.wait()
            transport = getattr(proc, "_transport", None)
            if transport is not None:
                transport.close()  # pipes a stray grandchild still holds
            await self._remove_work_dir()
        await self._recorder.flush()
        duration = time.monotonic() - started
        if self._stderr_lines > MAX_STDERR_LINES:
            self.log.warning("engine_stderr_dropped", lines=self._stderr_lines - MAX_STDERR_LINES)
        if self._garbage > MAX_GARBAGE_LOGS:
            self.log.warning("engine_garbage_dropped", lines=self._garbage - MAX_GARBAGE_LOGS)
        self.log.info("engine_exited", exit_code=proc.returncode, duration_s=round(duration, 3),
                      result=(self._recorder.result or {}).get("status"),
                      stop_reason=self.stop_reason, timed_out=timed_out)
        return RunResult(self._recorder.result, proc.returncode, stop_reason=self.stop_reason,
                         timed_out=timed_out and self.stop_reason is None,
                         last_stderr=self._last_stderr, duration_s=duration)

    async def _until_exit(self, proc: asyncio.subprocess.Process,
                          readers: list[asyncio.Task[None]]) -> None:
        await proc.wait()
        # Pipes end when every process holding them is gone; test runs the engine left
        # behind may still hold them.
        _, pending = await asyncio.wait(readers, timeout=PIPE_DRAIN_S)
        if pending:
            _signal_group(proc.pid, signal.SIGKILL)
            await asyncio.wait(pending, timeout=PIPE_DRAIN_S)
        for reader in readers:
            if reader.done() and not reader.cancelled():
                error = reader.exception()
                if error is not None:
                    raise error

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), self._kill_grace_s)
        except TimeoutError:
            self.log.warning("engine_kill", pid=proc.pid)
        _signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()

    async def _feed(self, stdin: asyncio.StreamWriter) -> None:
        """Write the spec as one line and keep the pipe open: the engine stops when it reads
        end-of-file, which the kernel delivers when this process dies (consumer.engine.
        lifeline). The pipe closes with the process's transport after the engine exits."""
        try:
            stdin.write(json.dumps(self._spec).encode("utf-8") + b"\n")
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            self.log.warning("engine_stdin_closed")

    async def _read_stdout(self, stream: asyncio.StreamReader) -> None:
        buffer = bytearray()
        discarding = False
        while True:
            chunk = await stream.read(READ_CHUNK)
            if not chunk:
                break
            start = 0
            while True:
                end = chunk.find(b"\n", start)
                if end < 0:
                    if not discarding:
                        buffer += chunk[start:]
                        if len(buffer) > MAX_LINE_BYTES:
                            self._garbage_line(f"line longer than {MAX_LINE_BYTES} bytes")
                            buffer.clear()
                            discarding = True
                    break
                if discarding:
                    discarding = False
                else:
                    buffer += chunk[start:end]
                    if len(buffer) > MAX_LINE_BYTES:
                        self._garbage_line(f"line longer than {MAX_LINE_BYTES} bytes")
                    else:
                        await self._line(bytes(buffer))
                    buffer.clear()
                start = end + 1
        if buffer and not discarding:
            await self._line(bytes(buffer))

    async def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").strip()
        if not text:
            return
        try:
            event = json.loads(text)
        except ValueError:
            self._garbage_line(text)
            return
        if not isinstance(event, dict):
            self._garbage_line(text)
            return
        event = self._scrub.any(event)
        try:
            await self._recorder.handle(event)
        except InvalidEvent as exc:
            self._garbage_line(text, str(exc))

    def _garbage_line(self, text: str, why: str = "not a JSON object") -> None:
        self._garbage += 1
        if self._garbage <= MAX_GARBAGE_LOGS:
            self.log.warning("engine_output_garbage", line=self._scrub.text(text[:200]),
                             why=self._scrub.text(why))

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        partial = b""
        while True:
            chunk = await stream.read(READ_CHUNK)
            if not chunk:
                break
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            if len(partial) > MAX_LINE_BYTES:
                lines.append(partial)
                partial = b""
            for line in lines:
                self._stderr_line(line)
        if partial:
            self._stderr_line(partial)

    def _stderr_line(self, raw: bytes) -> None:
        text = self._scrub.text(raw[:MAX_STDERR_CHARS * 4].decode("utf-8", errors="replace")
                                ).rstrip()
        if not text:
            return
        self._last_stderr = text[-500:]
        self._stderr_lines += 1
        if self._stderr_lines <= MAX_STDERR_LINES:
            self.log.info("engine_stderr", line=text[:MAX_STDERR_CHARS])

    async def _remove_work_dir(self) -> None:
        """The engine removes its worktree; a killed engine cannot, so do it here."""
        if self._work_dir:
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, self._work_dir,
                                                   ignore_errors=True))
