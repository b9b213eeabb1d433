"""The acceptance tests' toolkit: a producer and consumers as real processes on a test
database, generated repositories and tester profiles, and the evidence the tests check
afterwards (task and step rows, service logs, process trees, worktrees).

Every process a :class:`Cluster` starts carries ``BISECT_ACCEPTANCE_RUN=<random id>`` in its
environment, and so does everything those processes start (engines, test commands), so what
is left over is found by scanning ``/proc`` without touching anybody else's processes.

The tester profiles run the synthetic repositories' ``check.sh`` (``consumer/engine/
synthetic.py``) behind a small shell wrapper that appends ``start <pid> <time> <cwd>`` and
``end <pid> <time> <cwd>`` to a journal file per consumer: from it the tests read how many
test commands each consumer ran at once, and which processes a task started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from admin.launcher import ServiceProcess, http_json, wait_http_ok
from common.private_db import free_port
from consumer.engine.synthetic import SyntheticRepo, make_repo

API_TOKEN = "acceptance-api-token"
CONSUMER_TOKEN = "acceptance-consumer-token"
MARKER = "BISECT_ACCEPTANCE_RUN"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0

# The test command of every profile: journal the start, sleep ($ACC_SLEEP seconds, or a
# random 0-50 ms), run the synthetic check, journal the end, exit with the check's code.
_JOURNAL_START = 'echo "start $$ $(date +%s.%N) $PWD" >> "$ACC_JOURNAL"; '
CHECK_COMMAND = (
    _JOURNAL_START
    + 'if [ -n "$ACC_SLEEP" ]; then sleep "$ACC_SLEEP"; '
      'else sleep "$(printf "0.%03d" $(( $(od -An -N2 -tu2 /dev/urandom) % 51 )))"; fi; '
      './check.sh; rc=$?; '
      'echo "end $$ $(date +%s.%N) $PWD" >> "$ACC_JOURNAL"; exit $rc'
)
# A test that never ends (for timeouts and cancels); exec keeps the journaled pid.
HANG_COMMAND = _JOURNAL_START + "exec sleep 600"


def tester_profiles(journal: Path, *, slow_s: float = 0.4) -> dict[str, dict[str, Any]]:
    """``synth`` (0-50 ms a test), ``slow`` (``slow_s`` a test) and ``hang`` (forever)."""
    env = {"ACC_JOURNAL": str(journal)}
    return {
        "synth": {"kind": "command", "command": CHECK_COMMAND, "env": env},
        "slow": {"kind": "command", "command": CHECK_COMMAND,
                 "env": {**env, "ACC_SLEEP": str(slow_s)}},
        "hang": {"kind": "command", "command": HANG_COMMAND, "env": env, "kill_grace": 1},
    }


def make_repos(root: Path, count: int, n_commits: int = 24) -> list[SyntheticRepo]:
    """``count`` linear repositories, each with its culprit somewhere else."""
    repos = []
    for k in range(count):
        bad_index = 1 + (k * 7 + n_commits // 2) % (n_commits - 1)
        repos.append(make_repo(root / f"repo-{k}", n_commits, bad_index, seed=k))
    return repos


def task_request(repo: SyntheticRepo, job: str, *, tester: str = "synth",
                 with_good: bool = True, timeout: int | None = None) -> dict[str, Any]:
    """A submission for ``repo`` outside compass-ci (repo_url and bad_commit given)."""
    body: dict[str, Any] = {"bad_job_id": job, "error_id": repo.error_id,
                            "repo_url": str(repo.path), "bad_commit": repo.head,
                            "tester": tester}
    if with_good:
        body["good_commit"] = repo.root
    if timeout is not None:
        body["timeout"] = timeout
    return body


# ---------------------------------------------------------------- processes
@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    state: str
    pgid: int


def process_table() -> dict[int, Proc]:
    """Every process now, from ``/proc/<pid>/stat``."""
    table: dict[int, Proc] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                raw = handle.read().decode(errors="replace")
        except OSError:
            continue
        fields = raw.rsplit(")", 1)[1].split()  # the name may hold spaces and ')'
        table[int(entry.name)] = Proc(int(entry.name), int(fields[1]), fields[0],
                                      int(fields[2]))
    return table


def marked_pids(marker: str) -> set[int]:
    """Processes (zombies excluded: they have no environment) started by this cluster."""
    needle = f"{MARKER}={marker}".encode()
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0"):
                    found.add(int(entry.name))
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    proc = process_table().get(pid)
    return proc is not None and proc.state != "Z"


def cwd_under(root: Path) -> list[int]:
    """Processes whose working directory is inside ``root``."""
    prefix = str(root.resolve())
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
        except OSError:
            continue
        if cwd == prefix or cwd.startswith(prefix + "/"):
            found.append(int(entry.name))
    return found


def _descendants(root: int, table: dict[int, Proc]) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    out, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def kill_tree(pid: int) -> set[int]:
    """SIGKILL ``pid`` and every descendant, as a host crash would.

    Engines and test commands run in sessions of their own, so killing the service's process
    group would miss them: the tree is frozen with SIGSTOP first (nothing forks any more),
    collected by parent id, then killed. Returns the pids killed.
    """
    _send(pid, signal.SIGSTOP)
    stopped = {pid}
    while True:
        new = _descendants(pid, process_table()) - stopped
        if not new:
            break
        for child in new:
            _send(child, signal.SIGSTOP)
        stopped |= new
    for target in stopped:
        _send(target, signal.SIGKILL)
    return stopped


# ---------------------------------------------------------------- logs
def parse_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def events_named(service: ServiceProcess, *names: str) -> list[dict[str, Any]]:
    return [e for e in service.log_events() if e.get("event") in names]


@dataclass(frozen=True)
class Interval:
    key: Any
    start: float
    end: float  # inf: never seen ending
    pid: int | None = None


def engine_intervals(service: ServiceProcess) -> list[Interval]:
    """The consumer's engine subprocesses, from its ``engine_started``/``engine_exited``
    log events (keyed by task id and attempt)."""
    started: dict[tuple[int, int], tuple[float, int]] = {}
    ended: dict[tuple[int, int], float] = {}
    for event in events_named(service, "engine_started", "engine_exited"):
        key = (int(event["task_id"]), int(event["attempt"]))
        if event["event"] == "engine_started":
            started[key] = (parse_time(event["timestamp"]), int(event["pid"]))
        else:
            ended[key] = parse_time(event["timestamp"])
    return [Interval(key, start, ended.get(key, float("inf")), pid)
            for key, (start, pid) in started.items()]


def journal_intervals(journal: Path) -> list[Interval]:
    """Test command runs from a journal: start/end lines paired by pid and directory."""
    if not journal.exists():
        return []
    open_runs: dict[tuple[int, str], float] = {}
    out = []
    for line in journal.read_text().splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 4:
            continue
        what, pid, stamp, cwd = parts[0], int(parts[1]), float(parts[2]), parts[3]
        if what == "start":
            open_runs[(pid, cwd)] = stamp
        elif what == "end" and (pid, cwd) in open_runs:
            out.append(Interval(cwd, open_runs.pop((pid, cwd)), stamp, pid))
    out.extend(Interval(cwd, stamp, float("inf"), pid)
               for (pid, cwd), stamp in open_runs.items())
    return out


def max_concurrency(intervals: Iterable[Interval]) -> int:
    """The most intervals open at one instant (an end at the same instant as a start counts
    first: the slot was free again)."""
    points = sorted([(i.start, 1) for i in intervals] + [(i.end, -1) for i in intervals],
                    key=lambda p: (p[0], p[1]))
    level = peak = 0
    for _, delta in points:
        level += delta
        peak = max(peak, level)
    return peak


# ---------------------------------------------------------------- the services
@dataclass
class Consumer:
    name: str
    slots: int
    service: ServiceProcess
    work_dir: Path
    journal: Path
    crashed: bool = False  # killed with SIGKILL by the test

    def engine_pids(self) -> set[int]:
        return {i.pid for i in engine_intervals(self.service) if i.pid is not None}


@dataclass
class Cluster:
    """One producer (restartable on its port) and any number of consumers, all processes."""

    root: Path
    db_url: str
    lease_s: int = 3
    slow_s: float = 0.4  # the ``slow`` profile's test time
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    port: int = field(default_factory=free_port)
    producers: list[ServiceProcess] = field(default_factory=list)
    consumers: dict[str, Consumer] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def producer(self) -> ServiceProcess:
        return self.producers[-1]

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"  # one host: the consumers share the mirrors

    # ------------------------------------------------------------ start and stop
    def start_producer(self, **extra: str) -> ServiceProcess:
        env = {
            "BISECT_DB_URL": self.db_url, "BISECT_API_TOKENS": API_TOKEN,
            "BISECT_CONSUMER_TOKENS": CONSUMER_TOKEN, "BISECT_HOST": "127.0.0.1",
            "BISECT_PORT": str(self.port), "BISECT_DISCOVERY": "false",
            "BISECT_REPO_URL_ALLOW": str(self.root) + "/",
            "BISECT_LEASE_SECONDS": str(self.lease_s), "BISECT_SWEEP_INTERVAL_S": "0.5",
            "BISECT_WRITER_HEARTBEAT_S": "0.5", "BISECT_DEFAULT_TESTER": "synth",
            # The producer refuses tester names the deployment does not define.
            "BISECT_TESTERS": "synth,slow,hang",
            MARKER: self.marker, **extra}
        number = len(self.producers) + 1
        service = ServiceProcess(f"producer-{number}", "producer.main", env,
                                 self.root / "logs" / f"producer-{number}.log").start()
        self.producers.append(service)
        wait_http_ok(f"{self.base_url}/readyz", service, timeout=START_TIMEOUT_S)
        return service

    def start_consumer(self, name: str, slots: int = 2, **extra: str) -> Consumer:
        work_dir = self.root / name / "work"
        journal = self.root / name / "journal"
        env = {
            "BISECT_DB_URL": self.db_url, "BISECT_PRODUCER_URL": self.base_url,
            "BISECT_CONSUMER_TOKEN": CONSUMER_TOKEN, "BISECT_CONSUMER_ID": name,
            "BISECT_CONSUMER_SLOTS": str(slots),
            "BISECT_TESTERS": json.dumps(tester_profiles(journal, slow_s=self.slow_s)),
            "BISECT_CACHE_DIR": str(self.cache_dir), "BISECT_WORK_DIR": str(work_dir),
            "BISECT_CONSUMER_HTTP_PORT": "0", "BISECT_POLL_MIN_S": "0.05",
            "BISECT_POLL_MAX_S": "0.3", "BISECT_GRACE_S": "0.5", "BISECT_KILL_GRACE_S": "1",
            # Tests here write a journal under pytest's private temp folder and carry the
            # marker that finds their processes: they run as the test user, environment
            # passed through (tests/acceptance/test_sandbox_secrets.py covers the sandbox).
            "BISECT_SANDBOX": "none", "BISECT_SANDBOX_PASS_ENV": MARKER,
            MARKER: self.marker, **extra}
        service = ServiceProcess(name, "consumer.main", env,
                                 self.root / "logs" / f"{name}.log").start()
        consumer = Consumer(name, slots, service, work_dir, journal)
        self.consumers[name] = consumer
        wait_log_event(service, "worker_started", timeout=START_TIMEOUT_S)
        return consumer

    def crash(self, service: ServiceProcess) -> set[int]:
        """SIGKILL a service with everything it started; its log is closed."""
        killed = kill_tree(service.pid)
        service.wait(10)
        for consumer in self.consumers.values():
            if consumer.service is service:
                consumer.crashed = True
        return killed

    def stop_consumers(self) -> dict[str, int | None]:
        """SIGTERM every live consumer at once; their exit codes."""
        live = [c for c in self.consumers.values() if c.service.alive()]
        for consumer in live:
            consumer.service.signal(signal.SIGTERM)
        codes = {}
        for consumer in live:
            # One signal only: a second one means "abort" (and, once the consumer has put
            # its handlers away, kills it outright).
            codes[consumer.name] = consumer.service.wait(STOP_TIMEOUT_S)
            if codes[consumer.name] is None:
                kill_tree(consumer.service.pid)
                consumer.service.wait(10)
        return codes

    def shutdown(self) -> dict[str, int | None]:
        """Stop the consumers, then the producer (SIGTERM); the exit codes by name."""
        codes = self.stop_consumers()
        for producer in self.producers:
            if producer.alive():
                codes[producer.name] = producer.stop(STOP_TIMEOUT_S)
        return codes

    def kill_all(self) -> None:
        """Teardown, whatever happened: nothing this cluster started survives the test."""
        for service in [*(c.service for c in self.consumers.values()), *self.producers]:
            if service.alive():
                kill_tree(service.pid)
            service.wait(10)
        for pid in marked_pids(self.marker):
            _send(pid, signal.SIGKILL)

    # ------------------------------------------------------------ the HTTP API
    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return http_json(self.base_url + path, method=method, body=body, token=API_TOKEN,
                         timeout=30)

    def submit(self, requests: Sequence[dict[str, Any]]) -> list[int]:
        """Submit through the batch route; the new task ids in request order."""
        ids: list[int] = []
        for offset in range(0, len(requests), 500):
            status, answer = self.api("POST", "/api/v1/tasks/batch",
                                      {"tasks": list(requests[offset:offset + 500])})
            assert status == 200, answer
            assert answer["invalid"] == 0 and answer["existing"] == 0, answer
            ids.extend(int(r["task_id"]) for r in answer["results"])
        return ids

    def task(self, task_id: int) -> dict[str, Any]:
        status, answer = self.api("GET", f"/api/v1/tasks/{task_id}")
        assert status == 200, answer
        return answer["task"]

    def tasks(self) -> dict[int, dict[str, Any]]:
        """Every task (at most 1,000 in these tests), by id."""
        status, answer = self.api("GET", "/api/v1/tasks?limit=1000")
        assert status == 200, answer
        return {int(t["id"]): t for t in answer["tasks"]}

    def counts(self) -> dict[str, int]:
        status, answer = self.api("GET", "/api/v1/tasks/counts")
        assert status == 200, answer
        return answer["counts"]

    def cancel(self, task_id: int) -> dict[str, Any]:
        status, answer = self.api("POST", f"/api/v1/tasks/{task_id}/cancel")
        assert status == 200, answer
        return answer["task"]

    # ------------------------------------------------------------ evidence
    def leftover_worktrees(self) -> list[str]:
        """Bisection worktrees still on disk or registered in a mirror."""
        found = [str(p) for c in self.consumers.values() if c.work_dir.exists()
                 for p in c.work_dir.rglob("bisect-*")]
        for mirror in sorted(self.cache_dir.glob("*.git")) if self.cache_dir.exists() else []:
            listing = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=mirror,
                                     capture_output=True, text=True, check=False).stdout
            for line in listing.splitlines():
                path = Path(line.split(" ", 1)[1]) if line.startswith("worktree ") else None
                if path is not None and path != mirror and path.exists():
                    found.append(f"{path} (registered in {mirror.name})")
        return found

    def zombies(self) -> list[Proc]:
        """Zombies whose parent is one of this cluster's live processes: exited children
        nobody reaps. (Orphans of a tree the test killed belong to PID 1, which does not
        reap in some sandboxes; those are not the services' doing.)"""
        ours = marked_pids(self.marker)
        return [p for p in process_table().values() if p.state == "Z" and p.ppid in ours]

    def assert_clean_after_shutdown(self) -> None:
        """No process of this cluster, no worktree left; every engine pid gone."""
        left = marked_pids(self.marker)
        assert not left, f"processes left over: {sorted(left)}"
        table = process_table()
        for consumer in self.consumers.values():
            for pid in consumer.engine_pids():
                proc = table.get(pid)
                if proc is None:
                    continue
                # A zombie under PID 1 is the orphan of a crash the test caused.
                assert proc.state == "Z" and proc.ppid == 1 and consumer.crashed, (
                    f"engine {pid} of {consumer.name} is still there: {proc}")
        assert not self.leftover_worktrees(), self.leftover_worktrees()

    def logs_tail(self, chars: int = 3000) -> str:
        parts = []
        for service in [*self.producers, *(c.service for c in self.consumers.values())]:
            parts.append(f"--- {service.name} ({service.log_path})\n"
                         f"{service.log_text()[-chars:]}")
        return "\n".join(parts)


def wait_log_event(service: ServiceProcess, name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = events_named(service, name)
        if found:
            return found[0]
        if not service.alive():
            raise AssertionError(f"{service.name} exited before {name}:\n"
                                 f"{service.log_text()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"{service.name}: no {name} within {timeout} s:\n"
                         f"{service.log_text()[-3000:]}")


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something true; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
