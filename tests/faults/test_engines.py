"""Misbehaving bisection subprocesses (``BISECT_ENGINE_COMMAND`` = a script this test writes):
one that hangs and ignores SIGTERM, one that prints garbage instead of events, one that exits
without a result, one that floods stdout and stderr with hundreds of MB. Each task ends with a
clear reason, the consumer stays up with bounded memory, and it still runs real bisections
afterwards."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.acceptance.support import (
    Cluster,
    engine_intervals,
    events_named,
    make_repos,
    process_table,
    task_request,
    wait_until,
)
from tests.faults.support import (
    FINAL,
    assert_accounted,
    assert_clean_end,
    engine_script,
    record_figures,
    rss_mb,
)

pytestmark = [pytest.mark.faults, pytest.mark.acceptance]

RSS_LIMIT_MB = 200
FLOOD_LINE_MB = 200  # one stdout "line" without a newline
FLOOD_LINES_MB = 20  # short garbage lines
FLOOD_STDERR_MB = 25
FAKE_CULPRIT = "c" * 40

# Dispatch on the spec (stdin, one line): its repo_url names the misbehaviour. Anything
# else runs the real engine, so the same consumer still does real work afterwards.
DISPATCH = f"""
spec=$(head -n 1)
case "$spec" in
  *mode-hang*)
    trap '' TERM               # deaf to SIGTERM: only the SIGKILL after the grace works
    sleep 600 & wait ;;
  *mode-garbage*)
    printf 'this is not json\\n{{"event": "step", "seq": "x"}}\\n[1, 2, 3]\\n'
    printf '{{"event": "result"}}\\n{{"event": "result", "status": "found"}}\\n42\\n'
    head -c 2000000 /dev/urandom
    printf '\\n'
    exit 0 ;;
  *mode-noresult*)
    echo '{{"event": "started"}}'
    echo 'simulated engine crash: segmentation fault' >&2
    exit 3 ;;
  *mode-flood*)
    head -c {FLOOD_LINE_MB}000000 /dev/zero | tr '\\0' x
    printf '\\n'
    yes 'garbage garbage garbage garbage garbage garbage garbage garbage garbage' \\
      | head -c {FLOOD_LINES_MB}000000
    head -c {FLOOD_STDERR_MB}000000 /dev/zero | tr '\\0' y >&2
    yes 'an engine log line on stderr' | head -c 5000000 >&2
    printf '\\n{{"event": "result", "status": "found", "first_bad_commit": "{FAKE_CULPRIT}", '
    printf '"confidence": 1.0, "verification": null, "candidates": ["{FAKE_CULPRIT}"]}}\\n'
    exit 0 ;;
  *)
    printf '%s\\n' "$spec" | exec {sys.executable} -m consumer.engine --spec - ;;
esac
"""


def _fake(root: Path, mode: str, job: str, **extra: object) -> dict[str, object]:
    return {"bad_job_id": job, "error_id": "E_FAKE", "repo_url": f"{root}/mode-{mode}",
            "bad_commit": "a" * 40, "tester": "synth", **extra}


class RssSampler(threading.Thread):
    """Samples a process's resident memory every 50 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self.samples += 1
            time.sleep(0.05)


@pytest.mark.timeout(150)
async def test_misbehaving_engines_fail_cleanly_and_the_consumer_lives_on(
        cluster: Cluster, tmp_path: Path) -> None:
    command = engine_script(tmp_path, "dispatch", DISPATCH)
    cluster.start_producer()
    consumer = cluster.start_consumer("c", slots=4, BISECT_ENGINE_COMMAND=command)
    sampler = RssSampler(consumer.service.pid)
    sampler.start()
    base_rss = rss_mb(consumer.service.pid)
    started = time.monotonic()
    hang, garbage, noresult, flood = cluster.submit([
        _fake(tmp_path, "hang", "hang", timeout=3),
        _fake(tmp_path, "garbage", "garbage"),
        _fake(tmp_path, "noresult", "noresult"),
        _fake(tmp_path, "flood", "flood"),
    ])
    ids = [hang, garbage, noresult, flood]

    def all_final() -> dict[int, dict[str, object]] | None:
        tasks = {t: cluster.task(t) for t in ids}
        return tasks if all(t["status"] in FINAL for t in tasks.values()) else None

    try:
        tasks = wait_until(all_final, 90, "the four misbehaving tasks to end", interval=0.3)
    finally:
        sampler.done.set()
        sampler.join()
    elapsed = time.monotonic() - started
    assert consumer.service.alive(), consumer.service.log_text()[-3000:]

    # Each ends with a reason a person can act on.
    assert (tasks[hang]["status"], tasks[hang]["last_error"]) == ("failed", "timeout")
    assert tasks[garbage]["status"] == "failed"
    assert tasks[garbage]["last_error"].startswith("engine exited 0 without a result")
    assert tasks[noresult]["status"] == "failed"
    assert tasks[noresult]["last_error"] == (
        "engine exited 3 without a result: simulated engine crash: segmentation fault")
    assert tasks[flood]["status"] == "completed", tasks[flood]
    assert tasks[flood]["bad_commit"] == FAKE_CULPRIT

    # Memory stayed bounded while ~250 MB went through the pipes.
    assert sampler.peak < RSS_LIMIT_MB, (sampler.peak, base_rss)
    # The garbage was logged, but only the first lines of it.
    garbage_logs = events_named(consumer.service, "engine_output_garbage")
    assert 0 < len(garbage_logs) <= 2 * 20 + 4
    assert events_named(consumer.service, "engine_garbage_dropped")
    log_mb = consumer.service.log_path.stat().st_size / 1e6
    assert log_mb < 20, log_mb

    # The deaf engine and its child were killed: its whole process group is gone.
    engines = {i.key[0]: i for i in engine_intervals(consumer.service)}
    hung = engines[hang]
    assert hung.end != float("inf")
    assert [e for e in events_named(consumer.service, "engine_kill")
            if int(e["task_id"]) == hang], "SIGTERM was ignored: SIGKILL must have followed"
    assert not [p for p in process_table().values() if p.pgid == hung.pid and p.state != "Z"]

    # The same consumer still bisects for real afterwards.
    (synthetic,) = make_repos(tmp_path / "repos", 1, n_commits=16)
    (real,) = cluster.submit([task_request(synthetic, "real-after-faults")])
    after = wait_until(lambda: (t := cluster.task(real))["status"] in FINAL and t, 60,
                       "a real bisection after the faults")
    assert (after["status"], after["bad_commit"]) == ("completed", synthetic.culprit), after

    counts = assert_accounted(cluster, [*ids, real])
    assert consumer.service.alive()
    record_figures(
        "engine_misbehaviour", tasks=5, tasks_lost=0, double_runs=0,
        consumer_restarts=0, consumer_rss_base_mb=round(base_rss, 1),
        consumer_rss_peak_mb=round(sampler.peak, 1), rss_samples=sampler.samples,
        flood_mb=FLOOD_LINE_MB + FLOOD_LINES_MB + FLOOD_STDERR_MB + 5,
        consumer_log_mb=round(log_mb, 2), garbage_lines_logged=len(garbage_logs),
        hang_timeout_s=3, faults_end_s=round(elapsed, 1), statuses=counts,
        reasons={name: tasks[t]["last_error"] for name, t in
                 (("hang", hang), ("garbage", garbage), ("noresult", noresult))})
    print(json.dumps({"peak_rss_mb": sampler.peak, "elapsed_s": elapsed}))
    assert_clean_end(cluster)
