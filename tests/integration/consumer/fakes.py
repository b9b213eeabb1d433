"""A fake engine (a script written to tmp_path) and a fake producer (an aiohttp server)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

ENGINE_SOURCE = r'''
import json, os, signal, subprocess, sys, time

spec = json.loads(sys.stdin.readline())  # one line; the pipe stays open
tester = spec["tester"]
mode = tester.get("mode", "found")
journal = tester.get("journal")
pid = os.getpid()

def note(what):
    if journal:
        with open(journal, "a") as handle:
            handle.write(f"{what} {pid} {spec.get('task_id')} {time.time()}\n")

def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

def on_term(signum, frame):
    note("term")
    if mode != "stubborn":
        sys.exit(143)

signal.signal(signal.SIGTERM, on_term)
note("start")
if tester.get("spec_out"):
    with open(tester["spec_out"], "w") as handle:
        json.dump(spec, handle)
print("engine log line", file=sys.stderr, flush=True)
emit({"event": "started", "repo_url": spec["repo_url"], "bad_commit": spec["bad_commit"],
      "good_commit": spec["good_commit"]})

def found():
    emit({"event": "range", "good": ["g0"], "bad": spec["bad_commit"], "candidates": 3})
    emit({"event": "step", "seq": 1, "commit": "c2", "verdict": "bad", "runs": 1,
          "bad_runs": 1, "duration_s": 0.5, "job_id": "job-c2", "result_root": "/rr/c2",
          "detail": "errid seen", "reused": False})
    emit({"event": "verdict", "commit": "c2", "tester_fingerprint": tester.get("fp", ""),
          "error_id": spec["error_id"], "verdict": "bad", "runs": 1, "bad_runs": 1,
          "job_id": "job-c2"})
    emit({"event": "progress", "tested": 1, "candidates_left": 2, "est_steps_left": 1})
    emit({"event": "step", "seq": 2, "commit": "c1", "verdict": "good", "runs": 1,
          "bad_runs": 0, "duration_s": 0.25, "job_id": None, "result_root": None,
          "detail": "", "reused": True})
    emit({"event": "result", "status": "found", "first_bad_commit": "c2", "subject": "break",
          "author": "A <a@x>", "date": "2026-01-01", "candidates": ["c2"], "tested": ["c2", "c1"],
          "verification": {"held": True, "detail": "reverted: good"}, "confidence": 0.99,
          "runner_up": None, "runs": 2, "reason": None, "first_bad_job_id": "job-c2",
          "first_result_root": "/rr/c2", "head": None})
    note("end")
    sys.exit(0)

if mode == "found":
    found()
elif mode == "sleep":
    time.sleep(float(tester.get("sleep", 0.3)))
    found()
elif mode in ("hang", "stubborn"):
    if tester.get("child"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        with open(tester["child"], "w") as handle:
            handle.write(str(child.pid))
    emit({"event": "step", "seq": 1, "commit": "c9", "verdict": "skip", "runs": 1,
          "bad_runs": 0, "duration_s": 0.1, "job_id": None, "result_root": None,
          "detail": "", "reused": False})
    while True:
        time.sleep(0.05)
elif mode == "garbage":
    print("this is not json", flush=True)
    print("[1, 2, 3]", flush=True)
    print("x" * (2 * 1024 * 1024), flush=True)
    emit({"event": "step", "seq": "one", "commit": "c", "verdict": "bad"})
    sys.stdout.write('{"event": "step", "seq": 7, "comm')  # a line cut in two writes
    sys.stdout.flush()
    time.sleep(0.05)
    sys.stdout.write('it": "c7", "verdict": "skip", "runs": 1, "bad_runs": 0, "duration_s": 0}\n')
    sys.stdout.flush()
    found()
elif mode == "flood":
    junk = ("garbage " * 20 + "\n") * 1000
    for _ in range(60):
        sys.stdout.write(junk)
    sys.stdout.write("y" * (8 * 1024 * 1024))  # one endless line, then a newline
    sys.stdout.write("\n")
    for i in range(20000):
        sys.stdout.write(json.dumps({"event": "progress", "tested": i, "candidates_left": 5,
                                     "est_steps_left": 3}) + "\n")
    sys.stderr.write(("stderr flood " * 10 + "\n") * 20000)
    found()
elif mode == "crash":
    emit({"event": "step", "seq": 1, "commit": "c5", "verdict": "bad", "runs": 1,
          "bad_runs": 1, "duration_s": 0.1, "job_id": None, "result_root": None,
          "detail": "", "reused": False})
    print("Traceback (most recent call last): ...", file=sys.stderr)
    print("RuntimeError: git exploded", file=sys.stderr, flush=True)
    sys.exit(3)
elif mode == "ambiguous":
    emit({"event": "result", "status": "ambiguous", "first_bad_commit": None,
          "candidates": ["c3", "c4"], "runs": 4, "reason": None, "verification": None})
    sys.exit(1)
'''


def write_engine(directory: Path) -> tuple[str, ...]:
    path = directory / "fake_engine.py"
    path.write_text(ENGINE_SOURCE)
    return (sys.executable, str(path))


def journal_lines(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def max_concurrency(path: Path) -> int:
    """The most engines alive at once, from their start/end notes."""
    events: list[tuple[float, int]] = []
    for kind, _pid, _task, stamp in journal_lines(path):
        if kind == "start":
            events.append((float(stamp), 1))
        elif kind in ("end", "term"):
            events.append((float(stamp), -1))
    level = peak = 0
    for _, delta in sorted(events):
        level += delta
        peak = max(peak, level)
    return peak


@dataclass
class FakeTask:
    data: dict[str, Any]
    status: str = "wait"
    owner: str = ""
    claim: int = 0
    cancelled: bool = False

    @property
    def lease(self) -> str:
        """The secret of the current claim, as the real producer derives one per claim."""
        return f"lease-{self.data['id']}-{self.claim}-{self.owner}"


@dataclass
class FakeProducer:
    """The three internal routes, in memory."""

    lease_seconds: float = 0.6
    tasks: dict[str, FakeTask] = field(default_factory=dict)
    finishes: list[dict[str, Any]] = field(default_factory=list)
    claims: list[dict[str, Any]] = field(default_factory=list)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    max_held: int = 0
    server: TestServer | None = None

    def add(self, task_id: int, **fields: Any) -> None:
        data = {"id": str(task_id), "bad_job_id": f"job{task_id}", "error_id": "err.x",
                "git_url": "/srv/repo.git", "known_bad_commit": "bad0", "good_commit": "good0",
                "tester": "fake", "timeout": 0, "extra": {}, **fields}
        self.tasks[str(task_id)] = FakeTask(data)

    def held(self) -> int:
        return sum(1 for t in self.tasks.values() if t.status == "processing")

    async def claim(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.claims.append(body)
        out = []
        for task in self.tasks.values():
            if len(out) >= body["slots"]:
                break
            if task.status == "wait" and task.data["tester"] in body["testers"]:
                task.status, task.owner = "processing", body["consumer_id"]
                task.claim += 1
                out.append({**task.data, "claim": task.claim, "lease_expires_ms": 0,
                            "lease": task.lease})
        self.max_held = max(self.max_held, self.held())
        return web.json_response({"tasks": out, "lease_seconds": self.lease_seconds})

    async def heartbeat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.heartbeats.append(body)
        renewed, stop = [], []
        for task_id, lease in body["leases"].items():
            task = self.tasks.get(task_id)
            if (task is None or task.owner != body["consumer_id"]
                    or task.status != "processing" or lease != task.lease):
                stop.append({"task_id": task_id, "reason": "lease_lost"})
            elif task.cancelled:
                stop.append({"task_id": task_id, "reason": "cancelled"})
            else:
                renewed.append(task_id)
        return web.json_response({"renewed": renewed, "stop": stop,
                                  "lease_seconds": self.lease_seconds})

    async def finish(self, request: web.Request) -> web.Response:
        body = await request.json()
        task = self.tasks.get(body["task_id"])
        if (task is None or task.owner != body["consumer_id"] or task.status != "processing"
                or task.cancelled or body.get("lease") != task.lease):
            return web.json_response({"error": "not owner"}, status=409)
        self.finishes.append(body)
        task.status = {"completed": "completed", "failed": "failed",
                       "released": "wait"}[body["outcome"]]
        task.owner = ""
        return web.json_response({"status": task.status, "task": task.data})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/api/v1/internal/claim", self.claim)
        app.router.add_post("/api/v1/internal/heartbeat", self.heartbeat)
        app.router.add_post("/api/v1/internal/finish", self.finish)
        self.server = TestServer(app)
        await self.server.start_server()
        return str(self.server.make_url("")).rstrip("/")

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()


def pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_until(predicate: Any, timeout_s: float = 10.0, step_s: float = 0.05) -> bool:
    import asyncio

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step_s)
    return bool(predicate())
