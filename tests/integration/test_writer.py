"""The task-state writer with an injected clock: leases, grace, sweeping."""

from __future__ import annotations

import asyncio

from common.models import NewTask, TaskStatus
from common.repository import Repository
from producer.writer import TaskStateWriter


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_grace_after_database_trouble_keeps_live_leases(repo: Repository) -> None:
    clock = Clock()
    writer = TaskStateWriter(repo, lease_s=10, max_attempts=3, clock=clock)
    writer.set_lease_key(b"k" * 32)
    writer.start()
    (created,) = await writer.submit([NewTask(bad_job_id="1", error_id="e", tester="t")])
    (claimed,) = await writer.claim("c1", 1, ["t"])
    assert claimed.id == created.task.id
    clock.now += 30  # the database was away: no heartbeat could renew the lease
    writer.grant_grace()  # what a failed sweep or writer heartbeat does
    clock.now += 5
    assert (await writer.sweep()).requeued == []
    # The consumer is back in time.
    answer = await writer.heartbeat("c1", {claimed.id: writer.lease_of(claimed)})
    assert answer.renewed == [claimed.id]
    clock.now += 8
    assert (await writer.sweep()).requeued == []
    clock.now += 30  # now the consumer really is gone
    report = await writer.sweep()
    assert report.requeued == [claimed.id]
    task = await repo.get_task(claimed.id)
    assert task is not None and task.status is TaskStatus.WAIT and task.attempts == 1


async def test_concurrent_submits_are_coalesced_and_deduplicated(repo: Repository) -> None:
    writer = TaskStateWriter(repo, lease_s=10, max_attempts=3)
    items = [NewTask(bad_job_id=str(n % 7), error_id="e") for n in range(40)]
    results = await asyncio.gather(*[writer.submit([item]) for item in items])
    created = [r[0] for r in results if r[0].created]
    assert len(created) == 7
    assert len({r[0].task.id for r in results}) == 7


async def test_submit_each_answers_an_unstorable_item_with_its_error(repo: Repository) -> None:
    from common.errors import ValidationError

    writer = TaskStateWriter(repo, lease_s=10, max_attempts=3)
    items = [NewTask(bad_job_id=f"g{n}", error_id="e", tester="t") for n in range(5)]
    items.insert(3, NewTask(bad_job_id="bad", error_id="e", tester="t", project="p" * 300))
    results = await writer.submit_each(items)
    errors = [r for r in results if isinstance(r, ValidationError)]
    assert len(errors) == 1 and results[3] is errors[0] and errors[0].field == "repo_url"
    assert all(not isinstance(r, ValidationError) and r.created
               for i, r in enumerate(results) if i != 3)
    assert (await repo.count_by_status())["wait"] == 5
