"""Git, run as asyncio subprocesses: the shared bare-mirror cache and history queries.

One bare mirror per repository on a host (``git clone --mirror`` once, ``git fetch`` after,
never a re-clone), keyed by the sha256 of its canonical URL (``common.urls.cache_identity``),
so every spelling of a URL shares one mirror. A per-repository ``fcntl.flock`` serialises
clone, fetch and worktree bookkeeping, so bisections of the same repository can run at once;
the kernel drops the lock when its holder dies, even by SIGKILL.

Repositories and the tests run in them are not trusted: every git command runs with hooks
and fsmonitor off, without system or global config, with a short list of transports
(no ``ext::``), no HTTP redirects and a low-speed limit, in a small explicit environment.
A process holds a shared lock on each mirror it uses; :meth:`MirrorCache.evict` removes the
least recently used mirrors over ``BISECT_CACHE_MAX_GB`` and never one that is locked.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from common.urls import cache_identity, redact_text, redact_url
from consumer.engine.errors import GitError

log = structlog.get_logger(__name__)

# Transports git may use: ext:: and fd:: (which run commands) and remote helpers are out.
ALLOWED_PROTOCOLS = "file:git:http:https:ssh"
LOW_SPEED_BYTES_S = 1000  # a transfer slower than this ...
LOW_SPEED_TIME_S = 60  # ... for this long is aborted
CACHE_MAX_GB_ENV = "BISECT_CACHE_MAX_GB"
_GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_ALLOW_PROTOCOL": ALLOWED_PROTOCOLS,
    "GIT_NO_REPLACE_OBJECTS": "1",
}
# What git may inherit from the engine: how to reach the network, nothing else.
_INHERITED = ("PATH", "HOME", "SSH_AUTH_SOCK", "GIT_SSH_COMMAND", "http_proxy", "https_proxy",
              "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
# Config that a repository, a test or a user's config must never change for us.
SAFE_CONFIG = (
    "-c", f"core.hooksPath={os.devnull}", "-c", "core.fsmonitor=false",
    "-c", "http.followRedirects=false", "-c", f"http.lowSpeedLimit={LOW_SPEED_BYTES_S}",
    "-c", f"http.lowSpeedTime={LOW_SPEED_TIME_S}", "-c", "credential.helper=",
    "-c", "submodule.recurse=false", "-c", "protocol.ext.allow=never",
)
_LOCK_POLL_S = 0.05
_FULL_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


def git_env() -> dict[str, str]:
    """The environment of every git command: the network settings it needs, then ours."""
    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.setdefault("PATH", os.defpath)
    return {**env, **_GIT_ENV}


async def run_git(*args: str, cwd: Path | None = None, check: bool = True) -> str:
    """Run ``git args...``; returns stdout. Raises :class:`GitError` on failure when ``check``.

    Cancelling the caller kills git, so a SIGTERM never waits for a long fetch.
    """
    proc = await asyncio.create_subprocess_exec(
        "git",
        *SAFE_CONFIG,
        *args,
        cwd=cwd,
        env=git_env(),
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
        message = redact_text(err.decode(errors="replace").strip())
        raise GitError(f"git {redact_text(' '.join(args))} failed ({proc.returncode}): "
                       f"{message}")
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
    """The mirror's name: sha256 of the repository's canonical identity."""
    return hashlib.sha256(cache_identity(url).encode()).hexdigest()


def normalize_url(url: str) -> str:
    """Local paths become absolute (so one repository has one key); URLs stay as given."""
    if "://" in url or re.match(r"^[\w.-]+@[\w.-]+:", url):
        return url
    return str(Path(url).expanduser().resolve())


def cache_max_bytes(environ: dict[str, str] | None = None) -> int | None:
    """``BISECT_CACHE_MAX_GB`` in bytes; None (no limit) when unset or empty."""
    raw = (os.environ if environ is None else environ).get(CACHE_MAX_GB_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise GitError(f"{CACHE_MAX_GB_ENV}: expected a number of GB, got {raw!r}") from None
    if value <= 0:
        raise GitError(f"{CACHE_MAX_GB_ENV}: must be positive, got {raw!r}")
    return int(value * 1024**3)


# Shared "in use" locks this process holds, by lock path: a mirror this process works on is
# never evicted by another. Held until the process ends (one engine = one bisection) or
# :meth:`MirrorCache.release`.
_IN_USE: dict[Path, int] = {}


async def _hold_shared(path: Path) -> None:
    if path in _IN_USE:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # being evicted right now: wait, then clone again
                await asyncio.sleep(_LOCK_POLL_S)
    except BaseException:
        os.close(fd)
        raise
    _IN_USE[path] = fd


@dataclass(frozen=True)
class MirrorUse:
    path: Path
    size: int
    last_used: float


class MirrorCache:
    """The host's bare mirrors, one per repository, under ``cache_dir``.

    ``max_bytes`` (default: ``BISECT_CACHE_MAX_GB``) bounds the cache: after a clone or
    fetch the least recently used mirrors that nobody holds are removed until it fits.
    """

    def __init__(self, cache_dir: Path, max_bytes: int | None = None) -> None:
        self.cache_dir = cache_dir
        self.max_bytes = max_bytes if max_bytes is not None else cache_max_bytes()

    def mirror_path(self, url: str) -> Path:
        return self.cache_dir / f"{cache_key(url)}.git"

    def lock_path(self, url: str) -> Path:
        return self.cache_dir / f"{cache_key(url)}.lock"

    def use_path(self, url: str) -> Path:
        return self.cache_dir / f"{cache_key(url)}.use"

    async def ensure(self, url: str, wanted: Iterable[str] = ()) -> Path:
        """The mirror of ``url``, cloned the first time and fetched when ``wanted`` needs it.

        A fetch is skipped when every wanted revision is a full hash already present, which
        is the usual case for a CI bisection of a repository bisected before. From here on
        this process holds the mirror: :meth:`evict` leaves it alone.
        """
        url = normalize_url(url)
        mirror = self.mirror_path(url)
        use = self.use_path(url)
        await _hold_shared(use)
        with contextlib.suppress(OSError):
            os.utime(use)  # the clock of "least recently used"
        fetched = False
        async with file_lock(self.lock_path(url)):
            if not (mirror / "HEAD").exists():
                await self._clone(url, mirror)
                fetched = True
            elif not await _all_present(mirror, wanted):
                log.info("mirror_fetch", url=redact_url(url), mirror=str(mirror))
                await _network("fetch", "--prune", "--quiet", "origin", url=url, cwd=mirror)
                fetched = True
        if fetched and self.max_bytes is not None:
            await self.evict()
        return mirror

    def release(self, url: str) -> None:
        """Stop holding the mirror of ``url`` (it may be evicted from now on)."""
        fd = _IN_USE.pop(self.use_path(normalize_url(url)), None)
        if fd is not None:
            os.close(fd)

    async def evict(self) -> list[Path]:
        """Remove least recently used mirrors nobody holds until the cache fits
        ``max_bytes``; returns the mirrors removed."""
        if self.max_bytes is None:
            return []
        return await asyncio.to_thread(self._evict_sync, self.max_bytes)

    def usage(self) -> list[MirrorUse]:
        """Every mirror with its size on disk and when it was last used, oldest first."""
        found = []
        for mirror in self.cache_dir.glob("*.git"):
            use = mirror.with_suffix(".use")
            try:
                last = use.stat().st_mtime
            except OSError:
                last = mirror.stat().st_mtime if mirror.exists() else 0.0
            found.append(MirrorUse(mirror, _disk_bytes(mirror), last))
        return sorted(found, key=lambda m: m.last_used)

    def _evict_sync(self, max_bytes: int) -> list[Path]:
        mirrors = self.usage()
        total = sum(m.size for m in mirrors)
        removed: list[Path] = []
        for entry in mirrors:
            if total <= max_bytes:
                break
            use = entry.path.with_suffix(".use")
            if use in _IN_USE:
                continue
            fd = try_lock(use)
            if fd is None:
                continue  # another bisection holds it
            try:
                lock = try_lock(entry.path.with_suffix(".lock"))
                if lock is None:
                    continue  # being cloned or fetched
                try:
                    # Renamed first: a half-deleted mirror must never look like a mirror.
                    doomed = entry.path.with_name(f"{entry.path.stem}.evicted-"
                                                  f"{secrets.token_hex(4)}")
                    entry.path.rename(doomed)
                    shutil.rmtree(doomed, ignore_errors=True)
                finally:
                    os.close(lock)
            finally:
                os.close(fd)
            total -= entry.size
            removed.append(entry.path)
        if removed:
            log.info("mirrors_evicted", mirrors=[p.name for p in removed],
                     cache_bytes=total, max_bytes=max_bytes)
        return removed

    async def _clone(self, url: str, mirror: Path) -> None:
        # Clone next to the final place and rename: a clone killed halfway never looks
        # like a mirror to the next run.
        log.info("mirror_clone", url=redact_url(url), mirror=str(mirror))
        partial = mirror.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(mirror, ignore_errors=True)
        mirror.parent.mkdir(parents=True, exist_ok=True)
        try:
            await _network("clone", "--mirror", "--quiet", "--", url, str(partial), url=url)
        except BaseException:
            # A failed or killed clone must not keep its space on a small cache disk.
            shutil.rmtree(partial, ignore_errors=True)
            raise
        partial.rename(mirror)


async def _network(*args: str, url: str, cwd: Path | None = None) -> None:
    """A clone or fetch. Its failure says "could not fetch" and the redacted URL: git's own
    message (which names hosts, ports and errors of an internal network) goes to the log."""
    try:
        await run_git(*args, cwd=cwd)
    except GitError as exc:
        log.warning("git_fetch_failed", url=redact_url(url), error=str(exc)[:2000])
        if "No space left on device" in str(exc):  # ours to fix, and nothing about a network
            raise GitError(f"could not fetch {redact_url(url)}: no space left on device in "
                           "the git cache") from None
        raise GitError(f"could not fetch {redact_url(url)}") from None


def _disk_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


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
