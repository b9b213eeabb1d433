"""The ``command`` tester: runs a command in the worktree and judges its output.

The command runs in its own session (process group), so on timeout or cancellation the whole
group gets SIGTERM, then SIGKILL after a grace period; nothing it spawned outlives the test.
It runs in the sandbox (``sandbox.py``): a built environment, its own scratch ``HOME`` and
``TMPDIR``, another uid or bubblewrap as configured. Output (stdout and stderr, merged) is
scanned for error ids as it streams, and only its last MiB is kept.

A command whose program is a relative path (``./repro.sh``) runs the commit's file when the
commit has one, else the file at that path from where the engine was started (the folder
``bisect-run`` was run in), as ``git bisect run`` does with an untracked script.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
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
from consumer.engine.sandbox import Sandbox, remove_tree
from consumer.engine.tester_types import TesterContext
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
    network: bool = False  # in bubblewrap: keep the network (else the test has none)
    base_dir: str = "."  # where a relative program outside the commit is looked up

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
        network = profile.get("network", False)
        if not isinstance(network, bool):
            raise ValidationError("tester.network", "must be true or false")
        base_dir = profile.get("base_dir") or os.getcwd()
        if not isinstance(base_dir, str) or not os.path.isabs(base_dir):
            raise ValidationError("tester.base_dir", "must be an absolute path")
        return cls(
            network=network,
            base_dir=base_dir,
            command=command,
            workdir=workdir,
            timeout=timeout,
            errid_regex=regex,
            env=dict(env),
            kill_grace=kill_grace,
            name=str(profile.get("name", "command")),
        )

    def argv(self, cwd: Path | None = None) -> list[str]:
        """The command line; with ``cwd`` (the test's folder) a relative program the commit
        lacks becomes the absolute path of the one in :attr:`base_dir`."""
        if isinstance(self.command, str):
            return ["/bin/sh", "-c", self.command]
        program, *rest = self.command
        if cwd is None or "/" not in program or os.path.isabs(program):
            return list(self.command)
        if os.path.lexists(cwd / program):
            return list(self.command)  # the commit's own, as git bisect run would run it
        outside = Path(self.base_dir, program)
        if outside.exists():
            return [str(outside.resolve()), *rest]
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

    def __init__(self, profile: CommandProfile, context: TesterContext,
                 sandbox: Sandbox | None = None) -> None:
        self.profile = profile
        self.context = context
        self.sandbox = sandbox if sandbox is not None else Sandbox.from_env()
        # Each worktree's mirror, read from its .git file the first time: before any test
        # ran in it (later the file belongs to the test).
        self._mirrors: dict[Path, Path | None] = {}

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
        cwd = worktree / self.profile.workdir
        argv = self.profile.argv(cwd)
        sandbox = self.sandbox
        mirror = self._mirror_of(worktree)
        # In the test's environment, so that what it leaves running is found afterwards.
        run_marker = f"BISECT_TEST_RUN={secrets.token_hex(8)}"
        scratch = await asyncio.to_thread(sandbox.scratch)
        try:
            await asyncio.to_thread(sandbox.hand_over, worktree)
            env = sandbox.environment(commit=commit, home=scratch, tmpdir=scratch / "tmp",
                                      profile_env=self.profile.env)
            env["BISECT_TEST_RUN"] = run_marker.split("=", 1)[1]
            outside = [Path(argv[0])] if argv[0] != self.profile.argv()[0] else []
            command = sandbox.command(
                argv, cwd=cwd, writable=[worktree, scratch],
                readable=[p for p in (mirror, *outside) if p is not None],
                hidden=[worktree.parent, *([mirror.parent] if mirror is not None else [])],
                network=self.profile.network)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *command,
                    cwd=cwd,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    **sandbox.spawn_options(),
                )
            except OSError as exc:  # e.g. the script does not exist at this commit
                return Outcome(
                    verdict=Verdict.SKIP,
                    duration_s=time.monotonic() - started,
                    detail=f"cannot run {self.profile.display()}: {exc}",
                )
            timed_out = await self._supervise(proc, capture)
        finally:
            await asyncio.to_thread(sandbox.reap, run_marker, [worktree, scratch])
            await asyncio.to_thread(remove_tree, scratch)
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

    def _mirror_of(self, worktree: Path) -> Path | None:
        if worktree not in self._mirrors:
            mirror = None
            with contextlib.suppress(OSError, ValueError):
                text = (worktree / ".git").read_text(encoding="utf-8").strip()
                if text.startswith("gitdir:"):
                    gitdir = Path(text.removeprefix("gitdir:").strip())
                    if gitdir.parent.name == "worktrees":
                        mirror = gitdir.parent.parent
            self._mirrors[worktree] = mirror
        return self._mirrors[worktree]

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
