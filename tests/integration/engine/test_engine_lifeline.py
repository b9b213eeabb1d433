"""The real engine started as the consumer starts it (``--spec - --stop-on-eof``) stops as
on SIGTERM when its stdin closes, i.e. when the consumer that holds the pipe dies."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from consumer.engine.synthetic import make_repo
from tests.integration.engine.helpers import ROOT, spec_data


def test_the_engine_stops_when_its_stdin_closes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 20, 11)
    spec = spec_data(repo, tmp_path, tester={"command": ["sleep", "600"], "timeout": 900})
    proc = subprocess.Popen(
        [sys.executable, "-m", "consumer.engine", "--spec", "-", "--stop-on-eof"], cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(json.dumps(spec).encode() + b"\n")
        proc.stdin.flush()
        # The spec is read while the pipe stays open: the first test starts.
        for line in proc.stdout:
            if json.loads(line)["event"] == "testing":
                break
        started = time.monotonic()
        proc.stdin.close()  # what the kernel does when the consumer dies
        events = [json.loads(line) for line in proc.stdout]
        assert proc.wait(timeout=30) == 2
        assert time.monotonic() - started < 15
        assert events[-1]["event"] == "result" and events[-1]["status"] == "error"
        assert "SIGTERM" in events[-1]["reason"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
