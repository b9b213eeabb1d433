from __future__ import annotations

import asyncio
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from consumer.engine import git
from consumer.engine.errors import GitError
from consumer.engine.synthetic import make_repo
from consumer.engine.worktree import WorktreePool
from tests.integration.engine.helpers import worktrees_of


def _commit(repo: Path, message: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "--allow-empty", "-m", message],
                   check=True, env=env)
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()


async def test_mirror_is_cloned_once_then_fetched(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 5, 3)
    cache = git.MirrorCache(tmp_path / "mirrors")
    mirror = await cache.ensure(str(repo.path), [repo.head])
    assert mirror == cache.mirror_path(str(repo.path))
    assert mirror.name == git.cache_key(str(repo.path.resolve())) + ".git"
    marker = mirror / "clone-marker"
    marker.write_text("the first clone")
    new = _commit(repo.path, "later work")
    assert await cache.ensure(str(repo.path), [new]) == mirror
    assert marker.exists(), "the mirror was cloned again"
    assert await git.resolve_commit(mirror, new) == new


async def test_concurrent_bisections_share_one_mirror(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 5, 3)
    cache = git.MirrorCache(tmp_path / "mirrors")
    mirrors = await asyncio.gather(*(cache.ensure(str(repo.path), ["main"]) for _ in range(4)))
    assert len(set(mirrors)) == 1
    assert [p.name for p in (tmp_path / "mirrors").iterdir() if p.suffix == ".git"] == [
        mirrors[0].name
    ]


async def test_unknown_revision_is_a_git_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 3, 1)
    mirror = await git.MirrorCache(tmp_path / "m").ensure(str(repo.path))
    with pytest.raises(GitError, match="not a commit"):
        await git.resolve_commit(mirror, "no-such-branch")


async def test_pool_worktrees_are_removed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 4, 2)
    cache = git.MirrorCache(tmp_path / "mirrors")
    mirror = await cache.ensure(str(repo.path))
    work = tmp_path / "work"
    async with WorktreePool(mirror, cache.lock_path(str(repo.path)), work, size=2) as pool:
        first = await pool.acquire()
        second = await pool.acquire()
        await pool.checkout(first, repo.shas[1])
        await pool.checkout(second, repo.shas[3])
        assert (first.path / "state.txt").read_text() == "good\n"
        assert (second.path / "state.txt").read_text() == "bad\n"
        (first.path / "junk").write_text("left by a build")
        await pool.checkout(first, repo.shas[0])
        assert not (first.path / "junk").exists()
        assert len(worktrees_of(tmp_path / "mirrors")) == 2
    assert worktrees_of(tmp_path / "mirrors") == []
    assert not work.exists()  # the emptied folder goes too


async def test_stale_worktree_of_a_dead_process_is_swept(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 4, 2)
    cache = git.MirrorCache(tmp_path / "mirrors")
    mirror = await cache.ensure(str(repo.path))
    lock = cache.lock_path(str(repo.path))
    work = tmp_path / "work"
    dead = WorktreePool(mirror, lock, work)
    await dead.__aenter__()
    wt = await dead.acquire()
    os.close(wt.lock_fd)  # what the kernel does when the owner is SIGKILLed
    dead._all.clear()
    async with WorktreePool(mirror, lock, work) as live:
        await live.acquire()
        assert not wt.path.exists()
        assert len(worktrees_of(tmp_path / "mirrors")) == 1
        # A second bisection of the same repository leaves the live worktree alone.
        async with WorktreePool(mirror, lock, work):
            assert len(worktrees_of(tmp_path / "mirrors")) == 1
    assert worktrees_of(tmp_path / "mirrors") == []


# ------------------------------------------------------------ untrusted repositories
async def test_every_spelling_of_a_url_shares_one_mirror(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 3, 1)
    (tmp_path / "link").symlink_to(repo.path)
    cache = git.MirrorCache(tmp_path / "mirrors")
    spellings = [str(repo.path), f"{repo.path}/", f"file://{repo.path}",
                 f"{tmp_path}/./repo", str(tmp_path / "link")]
    mirrors = {await cache.ensure(s) for s in spellings}
    assert len(mirrors) == 1, mirrors


async def test_hooks_and_fsmonitor_written_into_a_mirror_never_run(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 4, 2)
    cache = git.MirrorCache(tmp_path / "mirrors")
    mirror = await cache.ensure(str(repo.path))
    ran = tmp_path / "ran"
    evil = f"#!/bin/sh\necho \"$0\" >> {ran}\n"
    hooks = tmp_path / "evil-hooks"
    hooks.mkdir()
    for folder in (mirror / "hooks", hooks):
        for name in ("post-checkout", "pre-commit", "reference-transaction"):
            (folder / name).write_text(evil)
            (folder / name).chmod(0o755)
    monitor = tmp_path / "fsmonitor.sh"
    monitor.write_text(evil)
    monitor.chmod(0o755)
    with (mirror / "config").open("a") as config:
        config.write(f"[core]\n\thooksPath = {hooks}\n\tfsmonitor = {monitor}\n")
    async with WorktreePool(mirror, cache.lock_path(str(repo.path)), tmp_path / "w") as pool:
        worktree = await pool.acquire()
        for sha in repo.shas:
            await pool.checkout(worktree, sha)
        await git.run_git("status", cwd=worktree.path)
    assert not ran.exists(), ran.read_text()


async def test_a_replaced_dot_git_in_a_worktree_is_ignored(tmp_path: Path) -> None:
    """A test owns its worktree: what it leaves in ``.git`` must not steer our git."""
    repo = make_repo(tmp_path / "repo", 4, 2)
    cache = git.MirrorCache(tmp_path / "mirrors")
    mirror = await cache.ensure(str(repo.path))
    async with WorktreePool(mirror, cache.lock_path(str(repo.path)), tmp_path / "w") as pool:
        worktree = await pool.acquire()
        await pool.checkout(worktree, repo.shas[1])
        (worktree.path / ".git").unlink()
        (worktree.path / ".git").write_text(f"gitdir: {tmp_path / 'nowhere'}\n")
        await pool.checkout(worktree, repo.shas[3])
        assert (worktree.path / "state.txt").read_text() == "bad\n"


@pytest.mark.parametrize("url", ["ext::sh -c touch% {marker}", "-u touch {marker}"])
async def test_dangerous_transports_and_options_are_refused(tmp_path: Path, url: str) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(GitError, match="could not fetch"):
        await git.MirrorCache(tmp_path / "m").ensure(url.format(marker=marker))
    assert not marker.exists()


async def test_fetch_error_names_no_network_detail(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://user:s3cret@127.0.0.1:{port}/repo.git"
    with pytest.raises(GitError) as caught:
        await git.MirrorCache(tmp_path / "m").ensure(url)
    assert str(caught.value) == f"could not fetch http://127.0.0.1:{port}/repo.git"
    assert not list((tmp_path / "m").glob("*.git")) and not list((tmp_path / "m").glob("*.partial"))


async def test_http_redirect_to_another_host_is_not_followed(tmp_path: Path) -> None:
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(f"{self.server.server_address!r} {self.path}")
            if self.server is first:
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{second.server_address[1]}"
                                 + self.path)
            else:
                self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    first = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    second = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (first, second)]
    for thread in threads:
        thread.start()
    try:
        with pytest.raises(GitError, match="could not fetch"):
            await git.MirrorCache(tmp_path / "m").ensure(
                f"http://127.0.0.1:{first.server_address[1]}/repo.git")
    finally:
        for server in (first, second):
            server.shutdown()
            server.server_close()
    assert hits and all(h.startswith(f"{first.server_address!r} ") for h in hits), hits


# ------------------------------------------------------------ a bounded cache
def _hold_in_another_process(path: Path) -> subprocess.Popen[str]:
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_SH); print('held', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


async def test_cache_evicts_least_recently_used_but_never_a_mirror_in_use(
        tmp_path: Path) -> None:
    repos = [make_repo(tmp_path / f"repo-{k}", 6, 3, seed=k) for k in range(4)]
    probe = git.MirrorCache(tmp_path / "probe")
    one = probe.usage  # size of one mirror, measured
    await probe.ensure(str(repos[0].path))
    size = one()[0].size
    cache = git.MirrorCache(tmp_path / "mirrors", max_bytes=int(size * 3.5))
    held = None
    try:
        for k, repo in enumerate(repos[:3]):
            await cache.ensure(str(repo.path))
            cache.release(str(repo.path))
            if k == 0:  # another bisection holds the oldest one
                held = _hold_in_another_process(cache.use_path(str(repo.path)))
            os.utime(cache.use_path(str(repo.path)), (1000 + k, 1000 + k))
        await cache.ensure(str(repos[3].path))  # over the limit now: evict
        left = {m.path for m in cache.usage()}
        assert cache.mirror_path(str(repos[0].path)) in left  # held elsewhere: kept
        assert cache.mirror_path(str(repos[1].path)) not in left  # least recently used
        assert cache.mirror_path(str(repos[3].path)) in left  # in use here
        assert sum(m.size for m in cache.usage()) <= size * 3.5
        # An evicted repository comes back with a fresh clone.
        again = await cache.ensure(str(repos[1].path))
        assert await git.resolve_commit(again, repos[1].head) == repos[1].head
    finally:
        if held is not None:
            held.kill()
            held.communicate()


def test_cache_limit_setting() -> None:
    assert git.cache_max_bytes({}) is None
    assert git.cache_max_bytes({"BISECT_CACHE_MAX_GB": "0.5"}) == 512 * 1024**2
    with pytest.raises(GitError, match="BISECT_CACHE_MAX_GB"):
        git.cache_max_bytes({"BISECT_CACHE_MAX_GB": "lots"})


# ------------------------------------------------------------ parallel bisect-run
def test_parallel_bisect_runs_sharing_the_default_cache_never_crash_each_other(
        tmp_path: Path) -> None:
    made = [make_repo(tmp_path / f"repo-{k}", 12, 5, seed=k) for k in range(3)]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    env.pop("BISECT_ENGINE_CACHE_DIR", None)
    procs = []
    for k in range(6):
        repo = made[k % 3]
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "consumer.engine.cli", "--repo", str(repo.path),
             "--bad", repo.head, "--good", repo.root, "--slots", "2", "--", "./check.sh"],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    for proc, k in zip(procs, range(6), strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (k, out[-1000:], err[-2000:])
        assert f"first bad commit: {made[k % 3].culprit}" in out


async def test_worktree_is_made_when_another_process_removed_the_empty_work_folder(
        tmp_path: Path) -> None:
    """What made parallel ``bisect-run`` processes fail with "worktree lock ... is busy":
    one finished and removed the shared, empty work folder while another was starting."""
    repo = make_repo(tmp_path / "repo", 4, 2)
    cache = git.MirrorCache(tmp_path / "mirrors")
    mirror = await cache.ensure(str(repo.path))
    work = tmp_path / "work"
    async with WorktreePool(mirror, cache.lock_path(str(repo.path)), work) as pool:
        work.rmdir()  # the other process's close()
        worktree = await pool.acquire()
        await pool.checkout(worktree, repo.shas[2])
        assert (worktree.path / "state.txt").exists()
