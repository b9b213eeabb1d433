"""Worktrees of a mirror, one or more per bisection, always removed afterwards.

Each worktree ``work_dir/bisect-<repo key>-<pid>-<random>`` has a lock file next to it
(``<name>.lock``) that its owner holds with ``flock`` for its whole life. Creation, removal and
the sweep of stale worktrees all run under the repository lock, so a sweeper never sees a
worktree whose owner has not locked it yet. A worktree whose lock can be taken belongs to a
dead process (SIGKILL): the next bisection of the repository removes it.

A test may own its worktree (the sandbox hands it to another uid), so nothing in it is
trusted afterwards: git runs on it with the administrative directory named explicitly
(``--git-dir``, ``--work-tree``), never through the worktree's own ``.git`` file.
Parallel ``bisect-run`` processes share the default work folder; one that finishes removes
the folder when it is empty, so creating a worktree makes the folder again when it vanished
in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import structlog

from consumer.engine.git import cache_key, file_lock, run_git, try_lock

log = structlog.get_logger(__name__)

PREFIX = "bisect-"
_CREATE_ATTEMPTS = 20


@dataclass
class Worktree:
    path: Path
    lock_fd: int
    gitdir: Path  # the mirror's worktrees/<name>: where git keeps this worktree's state
    head: str | None = field(default=None)

    def git_args(self) -> tuple[str, ...]:
        """Options that make git use this worktree without reading anything inside it."""
        return (f"--git-dir={self.gitdir}", f"--work-tree={self.path}")


def worktree_prefix(url_key: str) -> str:
    return f"{PREFIX}{url_key[:12]}-"


class WorktreePool:
    """Up to ``size`` worktrees of ``mirror`` in ``work_dir``, made on demand.

    Use as ``async with``: entering sweeps stale worktrees of this repository, leaving removes
    every worktree the pool made, whatever ended the bisection (error, cancellation).
    """

    def __init__(self, mirror: Path, repo_lock: Path, work_dir: Path, size: int = 1) -> None:
        self.mirror = mirror
        self.repo_lock = repo_lock
        self.work_dir = work_dir
        self.size = size
        self._prefix = worktree_prefix(cache_key(str(mirror)))
        self._all: list[Worktree] = []
        self._free: asyncio.Queue[Worktree] = asyncio.Queue()

    async def __aenter__(self) -> WorktreePool:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        await sweep_stale(self.mirror, self.repo_lock, self.work_dir, self._prefix)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def acquire(self) -> Worktree:
        if self._free.empty() and len(self._all) < self.size:
            worktree = await self._create()
            self._all.append(worktree)
            return worktree
        return await self._free.get()

    async def prepare(self) -> None:
        """Make all ``size`` worktrees now, so that parallel tests start together."""
        while len(self._all) < self.size:
            worktree = await self._create()
            self._all.append(worktree)
            self._free.put_nowait(worktree)

    def release(self, worktree: Worktree) -> None:
        self._free.put_nowait(worktree)

    async def checkout(self, worktree: Worktree, commit: str) -> None:
        """Put a pristine tree of ``commit`` in the worktree (untracked and ignored files go)."""
        await run_git(*worktree.git_args(), "checkout", "--quiet", "--detach", "--force",
                      commit, cwd=self.mirror)
        await run_git(*worktree.git_args(), "clean", "-ffdxq", cwd=self.mirror)
        worktree.head = commit

    async def _create(self) -> Worktree:
        name = f"{self._prefix}{os.getpid()}-{secrets.token_hex(4)}"
        path = self.work_dir / name
        async with file_lock(self.repo_lock):
            fd = _lock_new(_lock_file(path))
            try:
                await run_git("worktree", "add", "--detach", "--quiet", str(path), cwd=self.mirror)
                gitdir = _gitdir_of(path, self.mirror)
            except BaseException:
                os.close(fd)
                _lock_file(path).unlink(missing_ok=True)
                raise
        log.info("worktree_added", path=str(path))
        return Worktree(path=path, lock_fd=fd, gitdir=gitdir)

    async def close(self) -> None:
        """Remove every worktree of the pool, then its folder when empty; safe to call
        twice."""
        worktrees, self._all = self._all, []
        if worktrees:
            async with file_lock(self.repo_lock):
                for worktree in worktrees:
                    await _remove(self.mirror, worktree.path)
                    _lock_file(worktree.path).unlink(missing_ok=True)
                    os.close(worktree.lock_fd)
                    log.info("worktree_removed", path=str(worktree.path))
                await run_git("worktree", "prune", cwd=self.mirror, check=False)
        with contextlib.suppress(OSError):  # not empty (another pool's) or already gone
            self.work_dir.rmdir()


def _lock_file(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _lock_new(lock: Path) -> int:
    """Create and lock a fresh worktree's lock file, making its folder again when another
    process removed it (empty) in between; the fd holds the lock."""
    for _ in range(_CREATE_ATTEMPTS):
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            continue  # the folder went away between mkdir and open
        except FileExistsError:
            raise RuntimeError(f"worktree lock {lock} exists already") from None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new and ours: cannot be busy
        return fd
    raise OSError(errno.ENOENT, f"work folder {lock.parent} keeps disappearing")


def _gitdir_of(path: Path, mirror: Path) -> Path:
    """The administrative folder git made for the worktree at ``path`` (read right after
    ``worktree add``, while only we have touched it), which must lie in ``mirror``."""
    text = (path / ".git").read_text(encoding="utf-8").strip()
    gitdir = Path(text.removeprefix("gitdir:").strip())
    if not gitdir.is_absolute():
        gitdir = (path / gitdir).resolve()
    if gitdir.parent != (mirror / "worktrees").resolve() and gitdir.parent != mirror / "worktrees":
        raise RuntimeError(f"worktree {path} points outside its mirror: {gitdir}")
    return gitdir


async def _remove(mirror: Path, path: Path) -> None:
    await run_git("worktree", "remove", "--force", "--force", str(path), cwd=mirror, check=False)
    # Blocking file work goes to a thread: a big tree takes a while to delete.
    await asyncio.to_thread(shutil.rmtree, path, True)


async def sweep_stale(mirror: Path, repo_lock: Path, work_dir: Path, prefix: str) -> list[Path]:
    """Remove worktrees of ``mirror`` left by dead bisections; returns what was removed."""
    removed: list[Path] = []
    async with file_lock(repo_lock):
        await run_git("worktree", "prune", cwd=mirror, check=False)
        listing = await run_git("worktree", "list", "--porcelain", cwd=mirror, check=False)
        registered = [
            Path(line.split(" ", 1)[1])
            for line in listing.splitlines()
            if line.startswith("worktree ")
        ]
        on_disk = await asyncio.to_thread(_listing, work_dir, prefix)
        paths = {p for p in registered if p.name.startswith(PREFIX)}
        paths |= {p.with_name(p.name[: -len(".lock")]) if p.name.endswith(".lock") else p
                  for p in on_disk}
        for path in sorted(paths):
            if not _lock_file(path).parent.is_dir():
                continue
            fd = try_lock(_lock_file(path))
            if fd is None:
                continue  # a live bisection owns it
            try:
                await _remove(mirror, path)
                _lock_file(path).unlink(missing_ok=True)
            finally:
                os.close(fd)
            removed.append(path)
        if removed:
            await run_git("worktree", "prune", cwd=mirror, check=False)
            log.info("stale_worktrees_removed", paths=[str(p) for p in removed])
    return removed


def _listing(work_dir: Path, prefix: str) -> list[Path]:
    return list(work_dir.glob(f"{prefix}*")) if work_dir.is_dir() else []
