"""Git failures with the real engine: the git cache on a full disk, repositories that do not
answer or do not exist, a commit that does not exist. Each task fails with a clear reason,
the consumer keeps running, and a normal bisection afterwards still works (so a failed clone
left nothing behind that fills the disk)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.support import Cluster, make_repos, task_request, wait_until
from tests.faults.support import (
    FINAL,
    assert_accounted,
    assert_clean_end,
    record_figures,
)

pytestmark = [pytest.mark.faults, pytest.mark.acceptance]

TMPFS_SIZE = "2m"
BIG_BLOB_BYTES = 3_000_000  # random, so it does not compress below the 2 MB disk
MISSING_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _run(*argv: str | os.PathLike[str]) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True,
                          text=True).stdout.strip()


@contextlib.contextmanager
def small_disk(path: Path) -> Iterator[str]:
    """A 2 MB filesystem at ``path``: tmpfs, else an ext4 loop file; skip when neither can
    be mounted here. Yields how it was made."""
    path.mkdir(parents=True, exist_ok=True)
    reasons = []
    mounted = None
    if shutil.which("mount"):
        tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs",
                                str(path)], capture_output=True, text=True, check=False)
        if tmpfs.returncode == 0:
            mounted = "tmpfs"
        else:
            reasons.append(f"tmpfs: {tmpfs.stderr.strip()}")
            image = path.with_suffix(".img")
            if shutil.which("mkfs.ext4"):
                subprocess.run(["truncate", "-s", "4M", str(image)], check=False)
                made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)],
                                      capture_output=True, text=True, check=False)
                loop = subprocess.run(["mount", "-o", "loop", str(image), str(path)],
                                      capture_output=True, text=True, check=False)
                if made.returncode == 0 and loop.returncode == 0:
                    mounted = "ext4 loop file"
                else:
                    reasons.append(f"loop: {made.stderr.strip()} {loop.stderr.strip()}")
            else:
                reasons.append("loop: no mkfs.ext4")
    else:
        reasons.append("no mount command")
    if mounted is None:
        pytest.skip("cannot make a small filesystem for the git cache: " + "; ".join(reasons))
    try:
        yield mounted
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(path)], capture_output=True,
                              check=False).returncode == 0:
                break
            time.sleep(0.25)


def big_repo(path: Path) -> str:
    """A repository whose mirror does not fit on the small disk; its head commit."""
    path.mkdir(parents=True)
    _run("git", "-C", path, "init", "-q")
    (path / "blob.bin").write_bytes(os.urandom(BIG_BLOB_BYTES))
    (path / "check.sh").write_text("#!/bin/sh\nexit 1\n")
    _run("git", "-C", path, "add", ".")
    _run("git", "-C", path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "big")
    return _run("git", "-C", path, "rev-parse", "HEAD")


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung git server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(150)
async def test_git_failures_fail_the_task_with_a_reason_and_the_consumer_goes_on(
        cluster: Cluster, tmp_path: Path) -> None:
    (synthetic,) = make_repos(tmp_path / "repos", 1, n_commits=16)
    big_head = big_repo(tmp_path / "repos" / "big")
    closed = _closed_port()
    with small_disk(cluster.cache_dir) as disk, silent_server() as silent:
        cluster.start_producer(
            BISECT_REPO_URL_ALLOW=f"{tmp_path}/,http://127.0.0.1:{closed}/,"
                                  f"http://127.0.0.1:{silent}/",
            BISECT_TESTERS="synth,slow,hang")
        consumer = cluster.start_consumer("c", slots=2)

        def run(request: dict[str, object], timeout: float = 40) -> tuple[int, dict, float]:
            started = time.monotonic()
            (task_id,) = cluster.submit([request])
            task = wait_until(lambda: (t := cluster.task(task_id))["status"] in FINAL and t,
                              timeout, f"task {request['bad_job_id']} to end", interval=0.2)
            assert consumer.service.alive(), consumer.service.log_text()[-3000:]
            return task_id, task, time.monotonic() - started

        base = {"error_id": synthetic.error_id, "tester": "synth"}
        cases = {
            "full_disk": {**base, "bad_job_id": "full-disk",
                          "repo_url": str(tmp_path / "repos" / "big"), "bad_commit": big_head},
            "closed_port": {**base, "bad_job_id": "closed-port",
                            "repo_url": f"http://127.0.0.1:{closed}/x.git",
                            "bad_commit": MISSING_COMMIT},
            "missing_path": {**base, "bad_job_id": "missing-path",
                             "repo_url": str(tmp_path / "repos" / "does-not-exist.git"),
                             "bad_commit": MISSING_COMMIT},
            "silent_server": {**base, "bad_job_id": "silent-server", "timeout": 5,
                              "repo_url": f"http://127.0.0.1:{silent}/x.git",
                              "bad_commit": MISSING_COMMIT},
            "missing_commit": {**base, "bad_job_id": "missing-commit",
                               "repo_url": str(synthetic.path), "bad_commit": MISSING_COMMIT},
        }
        results = {}
        # One after the other: the full disk first, so the later clones show whether a
        # failed clone left the disk full.
        for name, request in cases.items():
            results[name] = run(request)
        cache_left = sorted(p.name for p in cluster.cache_dir.iterdir()
                            if p.suffix != ".lock")
        (real_id, real, _) = run(task_request(synthetic, "real-after-faults"), timeout=60)

        reasons = {name: task["last_error"] for name, (_, task, _) in results.items()}
        print(reasons)
        assert {task["status"] for _, task, _ in results.values()} == {"failed"}, reasons
        assert "no space left on device" in reasons["full_disk"], reasons
        # A submitter learns that the URL could not be fetched, not what the consumer's
        # network answered (security finding: last_error told which ports were open).
        assert reasons["closed_port"] == (
            f"error: could not fetch http://127.0.0.1:{closed}/x.git"), reasons
        assert reasons["missing_path"] == (
            f"error: could not fetch file://{tmp_path / 'repos' / 'does-not-exist.git'}"), reasons
        assert reasons["silent_server"] == "timeout", reasons
        assert MISSING_COMMIT in reasons["missing_commit"], reasons
        assert (real["status"], real["bad_commit"]) == ("completed", synthetic.culprit), real
        counts = assert_accounted(cluster, [*(t for t, _, _ in results.values()), real_id])
        record_figures(
            "git_failures", tasks=len(cases) + 1, tasks_lost=0, double_runs=0,
            consumer_restarts=0, disk=f"{disk} {TMPFS_SIZE}", statuses=counts,
            reasons=reasons, cache_entries_after_failures=cache_left,
            seconds_to_fail={name: round(s, 1) for name, (_, _, s) in results.items()},
            partial_clones_left=sum(n.endswith(".partial") for n in cache_left))
        assert_clean_end(cluster)
        partial = [name for name in cache_left if name.endswith(".partial")]
        assert not partial, f"interrupted clone left in the git cache: {partial}"
