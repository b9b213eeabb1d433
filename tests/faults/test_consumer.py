"""kill -9 of the consumer process alone (the OOM killer's way: its engines, in sessions of
their own, are not killed with it). The acceptance suite kills the whole tree (a host
crash); here the orphaned engines must end by themselves, their tasks come back after the
lease and complete on another consumer, and a restarted consumer leaves no worktree behind.
It is also where the time for a dead consumer's tasks to come back is measured."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.acceptance.support import (
    Cluster,
    engine_intervals,
    make_repos,
    task_request,
    wait_until,
)
from tests.faults.support import (
    FINAL,
    assert_accounted,
    assert_clean_end,
    descendants_alive,
    empty_dirs_left,
    record_figures,
)

pytestmark = [pytest.mark.faults, pytest.mark.acceptance]

LEASE_S = 3


def _held(cluster: Cluster, owner: str, want: int) -> list[int] | None:
    held = [int(t["id"]) for t in cluster.tasks().values()
            if t["status"] == "processing" and t["owner"] == owner and t["current_step"] >= 1]
    return held if len(held) >= want else None


@pytest.mark.timeout(120)
async def test_consumer_sigkilled_alone_orphans_end_and_tasks_come_back(
        cluster: Cluster, tmp_path: Path) -> None:
    cluster.lease_s = LEASE_S
    (synthetic,) = make_repos(tmp_path / "repos", 1, n_commits=24)
    cluster.start_producer()
    victim = cluster.start_consumer("victim", slots=3)
    ids = cluster.submit([task_request(synthetic, f"oom-{i}", tester="slow")
                          for i in range(6)])
    held = wait_until(lambda: _held(cluster, "victim", 3), 30, "three running bisections")
    cluster.start_consumer("survivor", slots=3)
    engines = {i.key[0]: i.pid for i in engine_intervals(victim.service)
               if i.end == float("inf")}
    killed_at = time.monotonic()
    os.kill(victim.service.pid, signal.SIGKILL)  # the consumer only
    victim.service.wait(10)
    victim.crashed = True

    # The orphaned engines notice their reader is gone and end by themselves.
    wait_until(lambda: not descendants_alive(engines.values()), 20,
               f"the orphaned engines {engines} to end")
    orphans_gone_s = time.monotonic() - killed_at
    orphans_gone_wall = time.time()

    back: dict[int, float] = {}
    done: dict[int, float] = {}

    def progress() -> bool:
        for task_id, task in cluster.tasks().items():
            if task_id in held and task["claims"] >= 2 and task_id not in back:
                back[task_id] = time.monotonic() - killed_at
            if task_id in held and task["status"] in FINAL and task_id not in done:
                done[task_id] = time.monotonic() - killed_at
        return len(done) == len(held)

    wait_until(progress, 60, "the dead consumer's tasks to be done elsewhere", interval=0.1)
    def all_final() -> dict[int, dict[str, object]] | None:
        tasks = cluster.tasks()
        return tasks if all(t["status"] in FINAL for t in tasks.values()) else None

    tasks = wait_until(all_final, 60, "every task to end")
    assert {t["status"] for t in tasks.values()} == {"completed"}, tasks
    assert {t["bad_commit"] for t in tasks.values()} == {synthetic.culprit}
    for task_id in held:
        assert tasks[task_id]["claims"] == 2, tasks[task_id]
    # The lease is the floor: nothing came back before it ran out.
    assert min(back.values()) >= LEASE_S - 0.5, back

    # A restarted consumer on the same directories sweeps what the dead one left.
    left_before = sorted(os.listdir(victim.work_dir)) if victim.work_dir.exists() else []
    restarted = cluster.start_consumer("victim", slots=1)
    restarted.crashed = True  # its log (appended to) holds the killed one's engines too
    (extra,) = cluster.submit([task_request(synthetic, "after-restart")])
    wait_until(lambda: cluster.task(extra)["status"] in FINAL, 60, "one more task")
    counts = assert_accounted(cluster, [*ids, extra], gone_at={"victim": orphans_gone_wall})
    record_figures(
        "consumer_kill_alone", lease_s=LEASE_S, tasks=len(ids) + 1, tasks_lost=0,
        double_runs=0, held_by_victim=len(held), statuses=counts,
        orphan_engines_gone_s=round(orphans_gone_s, 2),
        tasks_back_s=sorted(round(s, 2) for s in back.values()),
        tasks_done_s=sorted(round(s, 2) for s in done.values()),
        work_dir_left_by_victim=left_before)
    leftovers = empty_dirs_left(cluster, "victim")
    assert_clean_end(cluster, tolerate_empty_dirs=("victim",))
    # The orphaned engine removes its worktrees and then the <task>-<claim> folder.
    assert not leftovers, f"empty task directories left in BISECT_WORK_DIR: {leftovers}"
