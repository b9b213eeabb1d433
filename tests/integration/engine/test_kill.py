"""Killing the engine mid-run leaves no worktree and no lock behind for the next run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from consumer.engine.git import MirrorCache, try_lock
from consumer.engine.synthetic import SyntheticRepo, make_repo
from tests.integration.engine.helpers import engine_process, spec_data, worktrees_of


def _start_slow(repo: SyntheticRepo, tmp: Path) -> tuple[subprocess.Popen[str], int]:
    """Start the engine with a test that sleeps; returns it and the test's pid once running."""
    pidfile = tmp / "test.pid"
    spec = spec_data(repo, tmp, tester={
        "command": ["sh", "-c", f"echo $$ > {pidfile}; exec ./check.sh"],
        "env": {"SYNTH_SLEEP": "30"},
    })
    spec_file = tmp / "spec.json"
    spec_file.write_text(json.dumps(spec))
    proc = engine_process(["consumer.engine", "--spec", str(spec_file)])
    deadline = time.monotonic() + 20
    while not pidfile.exists() or not pidfile.read_text().strip():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"the test never started: {err}")
        time.sleep(0.05)
    return proc, int(pidfile.read_text())


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    return True


def _work_dir_entries(tmp: Path) -> list[str]:
    work = tmp / "cache" / "work"
    return sorted(p.name for p in work.iterdir()) if work.exists() else []


def _lock_is_free(repo: SyntheticRepo, tmp: Path) -> bool:
    fd = try_lock(MirrorCache(tmp / "cache" / "mirrors").lock_path(str(repo.path)))
    if fd is None:
        return False
    os.close(fd)
    return True


def test_sigterm_cleans_up_at_once(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 20, 10)
    proc, test_pid = _start_slow(repo, tmp_path)
    assert len(worktrees_of(tmp_path / "cache" / "mirrors")) == 1
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 2
    result = json.loads(out.splitlines()[-1])
    assert result["status"] == "error" and "SIGTERM" in result["reason"]
    assert _gone(test_pid), "the test process outlived the engine"
    assert worktrees_of(tmp_path / "cache" / "mirrors") == []
    assert _work_dir_entries(tmp_path) == []
    assert _lock_is_free(repo, tmp_path)


def test_sigkill_leftovers_are_swept_by_the_next_run(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 20, 10)
    proc, test_pid = _start_slow(repo, tmp_path)
    proc.kill()
    proc.communicate(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(test_pid, signal.SIGKILL)  # the orphaned test, in its own session
    assert len(worktrees_of(tmp_path / "cache" / "mirrors")) == 1  # left behind
    assert _lock_is_free(repo, tmp_path)  # the kernel dropped the flock

    again = engine_process(["consumer.engine", "--spec", "-"], stdin=subprocess.PIPE)
    out, err = again.communicate(json.dumps(spec_data(repo, tmp_path)), timeout=60)
    assert again.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["first_bad_commit"] == repo.culprit
    assert worktrees_of(tmp_path / "cache" / "mirrors") == []
    assert _work_dir_entries(tmp_path) == []
    assert "stale_worktrees_removed" in err
