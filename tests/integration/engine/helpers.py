"""Helpers for the engine's integration tests: specs on synthetic repos, engine processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from consumer.engine.events import Event
from consumer.engine.result import BisectResult
from consumer.engine.runner import run_task
from consumer.engine.spec import TaskSpec, parse_spec
from consumer.engine.synthetic import SyntheticRepo

ROOT = Path(__file__).resolve().parents[3]


def spec_data(repo: SyntheticRepo, tmp: Path, **overrides: Any) -> dict[str, Any]:
    tester = {"kind": "command", "name": "check", "command": ["./check.sh"], "timeout": 30,
              "kill_grace": 1}
    tester.update(overrides.pop("tester", {}))
    data: dict[str, Any] = {
        "repo_url": str(repo.path),
        "bad_commit": repo.head,
        "good_commit": repo.root,
        "error_id": repo.error_id,
        "tester": tester,
        "cache_dir": str(tmp / "cache" / "mirrors"),
        "work_dir": str(tmp / "cache" / "work"),
    }
    data.update(overrides)
    return data


def make_spec(repo: SyntheticRepo, tmp: Path, **overrides: Any) -> TaskSpec:
    return parse_spec(spec_data(repo, tmp, **overrides))


async def bisect(spec: TaskSpec) -> tuple[BisectResult, list[Event]]:
    events: list[Event] = []
    result = await run_task(spec, events.append)
    return result, events


def engine_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["BISECT_LOG_FORMAT"] = "json"
    return env


def engine_process(args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", *args], cwd=ROOT, env=engine_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs,
    )


def worktrees_of(mirror_dir: Path) -> list[str]:
    """Paths ``git worktree list`` shows for every mirror in ``mirror_dir`` (bare ones left out)."""
    paths: list[str] = []
    for mirror in mirror_dir.glob("*.git"):
        out = subprocess.run(["git", "-C", str(mirror), "worktree", "list", "--porcelain"],
                             capture_output=True, text=True, check=True).stdout
        blocks = out.strip().split("\n\n")
        paths += [b.split("\n")[0].split(" ", 1)[1] for b in blocks if "\nbare" not in b and b]
    return paths
