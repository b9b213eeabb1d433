"""Side by side with ``git bisect run`` on the same repository (benchmarks and tests)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from consumer.engine.events import Event
from consumer.engine.runner import run_task
from consumer.engine.spec import parse_spec

_SHA = re.compile(r"\b[0-9a-f]{40}\b")


@dataclass(frozen=True)
class Answer:
    tool: str
    first_bad: str | None  # one commit, or None when ambiguous
    candidates: tuple[str, ...]  # the commit, or the set skips leave
    runs: int  # test command runs, the bad-commit check and verification included
    confidence: float | None = None  # the engine's; git bisect claims none


def git_bisect_run(repo: Path, bad: str, good: str, command: list[str], count_file: Path,
                   extra_env: Mapping[str, str] | None = None) -> Answer:
    """Run ``git bisect run`` in ``repo``; runs are counted by the test (``SYNTH_COUNT_FILE``)."""
    env = {**os.environ, **(extra_env or {}), "SYNTH_COUNT_FILE": str(count_file), "LC_ALL": "C"}
    count_file.unlink(missing_ok=True)

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              env=env, check=False)

    git("bisect", "reset")
    started = git("bisect", "start", bad, good)
    if started.returncode != 0:
        raise RuntimeError(f"git bisect start failed: {started.stderr}")
    try:
        done = git("bisect", "run", *command)
    finally:
        git("bisect", "reset")
    out = done.stdout + done.stderr
    runs = len(count_file.read_text().splitlines()) if count_file.exists() else 0
    found = re.search(r"([0-9a-f]{40}) is the first bad commit", out)
    if found:
        return Answer("git bisect run", found.group(1), (found.group(1),), runs)
    if "could be any of" in out:
        tail = out.split("could be any of", 1)[1]
        candidates = tuple(dict.fromkeys(_SHA.findall(tail)))
        return Answer("git bisect run", None, candidates, runs)
    raise RuntimeError(f"cannot read git bisect run's answer:\n{out}")


async def engine_answer(
    repo: Path,
    bad: str,
    good: str | None,
    command: list[str],
    *,
    cache_dir: Path,
    error_id: str | None,
    slots: int = 1,
    flaky: bool | None = None,
) -> tuple[Answer, list[Event]]:
    """Run the engine in-process on ``repo``; the answer and every event it emitted.

    ``flaky`` False: git's search (``bisect-run --no-flaky``); None: the default search."""
    events: list[Event] = []
    spec = parse_spec({
        "repo_url": str(repo),
        "bad_commit": bad,
        "good_commit": good,
        "error_id": error_id,
        "tester": {"kind": "command", "name": "compare", "command": command, "timeout": 60},
        "limits": {"slots": slots, **({} if flaky is None else {"flaky": flaky})},
        "cache_dir": str(cache_dir / "mirrors"),
        "work_dir": str(cache_dir / "work"),
    })
    result = await run_task(spec, events.append)
    events.append(result.to_event())
    answer = Answer("bisect engine", result.first_bad_commit, result.candidates, result.runs,
                    result.confidence)
    return answer, events
