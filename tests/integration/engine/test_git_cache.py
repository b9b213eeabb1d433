from __future__ import annotations

import asyncio
import os
import subprocess
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
