"""Git, run as asyncio subprocesses: the shared bare-mirror cache and history queries.

One bare mirror per repository URL on a host (``git clone --mirror`` once, ``git fetch``
after, never a re-clone), keyed by the sha256 of the URL. A per-repository ``fcntl.flock``
serialises clone, fetch and worktree bookkeeping, so bisections of the same repository can
run at once; the kernel drops the lock when its holder dies, even by SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from consumer.engine.errors import GitError

log = structlog.get_logger(__name__)

_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_CONFIG_NOSYSTEM": "1"}
_LOCK_POLL_S = 0.05
_FULL_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


async def run_git(*args: str, cwd: Path | None = None, check: bool = True) -> str:
    """Run ``git args...``; returns stdout. Raises :class:`GitError` on failure when ``check``.

    Cancelling the caller kills git, so a SIGTERM never waits for a long fetch.
    """
    env = {**os.environ, **_GIT_ENV}
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if check and proc.returncode != 0:
        message = err.decode(errors="replace").strip()
        raise GitError(f"git {' '.join(args)} failed ({proc.returncode}): {message}")
    return out.decode(errors="replace")


@contextlib.asynccontextmanager
async def file_lock(path: Path) -> AsyncIterator[None]:
    """Hold an exclusive ``flock`` on ``path``, polling so that waiting stays cancellable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(_LOCK_POLL_S)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def try_lock(path: Path) -> int | None:
    """Take ``flock`` on ``path`` without waiting; the fd (holding it) or None when busy."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def cache_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def normalize_url(url: str) -> str:
    """Local paths become absolute (so one repository has one key); URLs stay as given."""
    if "://" in url or re.match(r"^[\w.-]+@[\w.-]+:", url):
        return url
    return str(Path(url).expanduser().resolve())


class MirrorCache:
    """The host's bare mirrors, one per repository URL, under ``cache_dir``."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir

    def mirror_path(self, url: str) -> Path:
        return self.cache_dir / f"{cache_key(normalize_url(url))}.git"

    def lock_path(self, url: str) -> Path:
        return self.cache_dir / f"{cache_key(normalize_url(url))}.lock"

    async def ensure(self, url: str, wanted: Iterable[str] = ()) -> Path:
        """The mirror of ``url``, cloned the first time and fetched when ``wanted`` needs it.

        A fetch is skipped when every wanted revision is a full hash already present, which
        is the usual case for a CI bisection of a repository bisected before.
        """
        url = normalize_url(url)
        mirror = self.mirror_path(url)
        async with file_lock(self.lock_path(url)):
            if not (mirror / "HEAD").exists():
                await self._clone(url, mirror)
            elif not await _all_present(mirror, wanted):
                log.info("mirror_fetch", url=url, mirror=str(mirror))
                await run_git("fetch", "--prune", "--quiet", "origin", cwd=mirror)
        return mirror

    async def _clone(self, url: str, mirror: Path) -> None:
        # Clone next to the final place and rename: a clone killed halfway never looks
        # like a mirror to the next run.
        log.info("mirror_clone", url=url, mirror=str(mirror))
        partial = mirror.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(mirror, ignore_errors=True)
        mirror.parent.mkdir(parents=True, exist_ok=True)
        try:
            await run_git("clone", "--mirror", "--quiet", url, str(partial))
        except BaseException:
            # A failed or killed clone must not keep its space on a small cache disk.
            shutil.rmtree(partial, ignore_errors=True)
            raise
        partial.rename(mirror)


async def _all_present(mirror: Path, revs: Iterable[str]) -> bool:
    wanted = [r for r in revs if r]
    if not wanted or not all(_FULL_SHA.match(r.lower()) for r in wanted):
        return False
    for rev in wanted:
        out = await run_git("cat-file", "-t", rev, cwd=mirror, check=False)
        if out.strip() != "commit":
            return False
    return True


async def resolve_commit(repo: Path, rev: str) -> str:
    """The full hash of ``rev``; :class:`GitError` naming it when it is no commit."""
    out = await run_git(
        "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", cwd=repo, check=False
    )
    sha = out.strip()
    if not sha:
        raise GitError(f"revision {rev!r} is not a commit in {repo}")
    return sha


async def first_parent_chain(repo: Path, bad: str, steps: int) -> list[str]:
    """``bad`` and up to ``steps`` commits behind it along first parents, newest first."""
    out = await run_git(
        "rev-list", "--first-parent", f"--max-count={steps + 1}", bad, cwd=repo
    )
    return out.split()


async def range_parents(repo: Path, bad: str, goods: Sequence[str]) -> list[str]:
    """``git rev-list --topo-order --parents bad --not goods...``: one line per commit."""
    out = await run_git("rev-list", "--topo-order", "--parents", bad, "--not", *goods, cwd=repo)
    return out.splitlines()


async def parents_of(repo: Path, commit: str) -> tuple[str, ...]:
    out = await run_git("rev-list", "--parents", "-n", "1", commit, cwd=repo)
    return tuple(out.split()[1:])


@dataclass(frozen=True)
class CommitInfo:
    subject: str
    author: str
    date: str


async def commit_info(repo: Path, commit: str) -> CommitInfo:
    out = await run_git("log", "-1", "--format=%s%x00%an <%ae>%x00%aI", commit, cwd=repo)
    subject, author, date = [*out.rstrip("\n").split("\x00"), "", "", ""][:3]
    return CommitInfo(subject=subject, author=author, date=date)
