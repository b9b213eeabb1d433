"""The ``command`` tester: runs a command in the worktree and judges its output.

The command runs in its own session (process group), so on timeout or cancellation the whole
group gets SIGTERM, then SIGKILL after a grace period; nothing it spawned outlives the test.
Output (stdout and stderr, merged) is scanned for error ids as it streams, and only its last
MiB is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from common.errors import ValidationError
from consumer.engine.output import DEFAULT_ERRID_REGEX, DEFAULT_TAIL_BYTES, OutputCapture
from consumer.engine.testers import TesterContext
from consumer.engine.verdicts import Outcome, Verdict, classify

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT_S = 3600.0
DEFAULT_KILL_GRACE_S = 5.0
_READ_CHUNK = 64 * 1024
_DETAIL_CHARS = 400
_DRAIN_AFTER_EXIT_S = 2.0


@dataclass(frozen=True)
class CommandProfile:
    """A validated ``{"kind": "command", ...}`` tester profile."""

    command: tuple[str, ...] | str
    workdir: str = "."
    timeout: float = DEFAULT_TIMEOUT_S
    errid_regex: str = DEFAULT_ERRID_REGEX
    env: Mapping[str, str] | None = None
    kill_grace: float = DEFAULT_KILL_GRACE_S
    name: str = "command"

    @classmethod
    def from_mapping(cls, profile: Mapping[str, Any]) -> CommandProfile:
        command = profile.get("command")
        if isinstance(command, str):
            if not command.strip():
                raise ValidationError("tester.command", "must not be empty")
        elif isinstance(command, list) and command and all(isinstance(a, str) for a in command):
            command = tuple(command)
        else:
            raise ValidationError("tester.command", "must be a non-empty argv list or a string")
        workdir = profile.get("workdir", ".")
        if not isinstance(workdir, str) or PurePosixPath(workdir).is_absolute() or ".." in (
            PurePosixPath(workdir).parts
        ):
            raise ValidationError("tester.workdir", "must be a relative path inside the worktree")
        timeout = _positive(profile, "timeout", DEFAULT_TIMEOUT_S)
        kill_grace = _positive(profile, "kill_grace", DEFAULT_KILL_GRACE_S)
        regex = profile.get("errid_regex") or DEFAULT_ERRID_REGEX
        try:
            compiled = re.compile(regex)
        except (re.error, TypeError) as exc:
            raise ValidationError("tester.errid_regex", f"not a valid regex: {exc}") from exc
        if compiled.groups > 1:
            raise ValidationError("tester.errid_regex", "must have at most one group (the id)")
        env = profile.get("env") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise ValidationError("tester.env", "must map names to string values")
        return cls(
            command=command,
            workdir=workdir,
            timeout=timeout,
            errid_regex=regex,
            env=dict(env),
            kill_grace=kill_grace,
            name=str(profile.get("name", "command")),
        )

    def argv(self) -> list[str]:
        if isinstance(self.command, str):
            return ["/bin/sh", "-c", self.command]
        return list(self.command)

    def display(self) -> str:
        return self.command if isinstance(self.command, str) else shlex.join(self.command)


def _positive(profile: Mapping[str, Any], key: str, default: float) -> float:
    value = profile.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValidationError(f"tester.{key}", "must be a positive number of seconds")
    return float(value)


class CommandTester:
    """Runs the profile's command at each commit; one run per commit."""

    def __init__(self, profile: CommandProfile, context: TesterContext) -> None:
        self.profile = profile
        self.context = context

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any], context: TesterContext) -> CommandTester:
        return cls(CommandProfile.from_mapping(profile), context)

    async def test(self, commit: str, worktree: Path) -> Outcome:
        started = time.monotonic()
        capture = OutputCapture(
            errid_regex=self.profile.errid_regex,
            error_id=self.context.error_id,
            tail_bytes=DEFAULT_TAIL_BYTES,
        )
        env = {**os.environ, **(self.profile.env or {}), "BISECT_COMMIT": commit}
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.profile.argv(),
                cwd=worktree / self.profile.workdir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:  # e.g. the script does not exist at this commit
            return Outcome(
                verdict=Verdict.SKIP,
                duration_s=time.monotonic() - started,
                detail=f"cannot run {self.profile.display()}: {exc}",
            )
        timed_out = await self._supervise(proc, capture)
        capture.close()
        verdict, reason = classify(
            exit_code=proc.returncode,
            timed_out=timed_out,
            error_id=self.context.error_id,
            errids_seen=capture.errids,
            different_error=self.context.different_error,
        )
        tail = capture.tail(_DETAIL_CHARS).strip()
        detail = reason + (f"; output tail: {tail}" if tail else "")
        return Outcome(
            verdict=verdict,
            runs=1,
            bad_runs=1 if verdict is Verdict.BAD else 0,
            errids_seen=frozenset(capture.errids),
            duration_s=round(time.monotonic() - started, 3),
            detail=detail,
        )

    async def _supervise(self, proc: asyncio.subprocess.Process, capture: OutputCapture) -> bool:
        """Wait for the command within the timeout; True when it timed out."""
        assert proc.stdout is not None
        pump = asyncio.create_task(_pump(proc.stdout, capture))
        timed_out = False
        try:
            try:
                await asyncio.wait_for(proc.wait(), self.profile.timeout)
            except TimeoutError:
                timed_out = True
                log.warning("test_timeout", pid=proc.pid, timeout=self.profile.timeout)
                await _kill_group(proc, self.profile.kill_grace)
            # Whatever the command left running in its group would hold the pipe open.
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pump), _DRAIN_AFTER_EXIT_S)
        finally:
            if proc.returncode is None:  # cancelled (SIGTERM of the engine) or an error
                await _kill_group(proc, self.profile.kill_grace)
            if not pump.done():
                pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        return timed_out


async def _pump(stream: asyncio.StreamReader, capture: OutputCapture) -> None:
    while chunk := await stream.read(_READ_CHUNK):
        capture.feed(chunk)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _kill_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM the whole process group, SIGKILL it after ``grace`` seconds."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        pass
    _signal_group(proc.pid, signal.SIGKILL)
    await proc.wait()
