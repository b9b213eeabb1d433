"""A consumer's identity is its lease, not what its body says (issue 15, finding 3): another
token holder cannot finish or renew a task it was not handed, claims are capped per consumer,
and testers the deployment does not know are refused at claim and at submit."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from common.models import TaskStatus
from common.repository import Repository
from common.settings import DbUrl
from tests.producer_support import CONSUMER, WRITE, producer_settings, running_producer

ERR = "last_state.test.pkgbuild.exit_code.1"
CLAIM = "/api/v1/internal/claim"
HEARTBEAT = "/api/v1/internal/heartbeat"
FINISH = "/api/v1/internal/finish"


def _settings(db_url: DbUrl, **overrides: Any) -> Any:
    return producer_settings(db_url, **{"known_testers": frozenset({"demo"}), **overrides})


async def _submit(client: TestClient[Any, Any], job: str, tester: str = "demo") -> Any:
    return await client.post("/api/v1/tasks", headers=WRITE, json={
        "bad_job_id": job, "error_id": ERR, "repo_url": "https://git.example/a",
        "bad_commit": "abc1234", "tester": tester})


async def _claim(client: TestClient[Any, Any], consumer: str, slots: int = 1,
                 testers: tuple[str, ...] = ("demo",)) -> Any:
    return await client.post(CLAIM, headers=CONSUMER, json={
        "consumer_id": consumer, "slots": slots, "testers": list(testers)})


async def test_only_the_lease_holder_can_finish_or_renew(repo: Repository,
                                                         db_url: DbUrl) -> None:
    async with running_producer(_settings(db_url)) as client:
        task_id = (await (await _submit(client, "j1")).json())["task"]["id"]
        (task,) = (await (await _claim(client, "victim")).json())["tasks"]
        lease = task["lease"]
        assert len(lease) >= 32
        # The attacker holds a consumer token and knows the victim's consumer id.
        forged = {"consumer_id": "victim", "task_id": task_id, "outcome": "completed",
                  "result": {"bad_commit": "f" * 40}}
        missing = await client.post(FINISH, headers=CONSUMER, json=forged)
        assert missing.status == 422 and (await missing.json())["field"] == "lease"
        wrong = await client.post(FINISH, headers=CONSUMER, json={**forged, "lease": "0" * 64})
        assert wrong.status == 409
        beat = await (await client.post(HEARTBEAT, headers=CONSUMER, json={
            "consumer_id": "victim", "leases": {task_id: "0" * 64}})).json()
        assert beat["stop"] == [{"task_id": task_id, "reason": "lease_lost"}]
        stored = await repo.get_task(int(task_id))
        assert stored is not None and stored.status is TaskStatus.PROCESSING
        assert stored.bad_commit is None
        # The lease itself under another consumer id is no better.
        other = await client.post(FINISH, headers=CONSUMER,
                                  json={**forged, "consumer_id": "thief", "lease": lease})
        assert other.status == 409
        # The holder renews and finishes.
        renewed = await (await client.post(HEARTBEAT, headers=CONSUMER, json={
            "consumer_id": "victim", "leases": {task_id: lease}})).json()
        assert renewed["renewed"] == [task_id]
        done = await client.post(FINISH, headers=CONSUMER, json={
            **forged, "lease": lease, "result": {"bad_commit": "a" * 40}})
        assert done.status == 200, await done.text()
        stored = await repo.get_task(int(task_id))
        assert stored is not None and stored.bad_commit == "a" * 40


async def test_a_lease_dies_with_its_claim_and_survives_a_producer_restart(
        repo: Repository, db_url: DbUrl) -> None:
    settings = _settings(db_url)
    async with running_producer(settings) as client:
        task_id = (await (await _submit(client, "j1")).json())["task"]["id"]
        (first,) = (await (await _claim(client, "c1")).json())["tasks"]
        released = await client.post(FINISH, headers=CONSUMER, json={
            "consumer_id": "c1", "task_id": task_id, "outcome": "released",
            "lease": first["lease"]})
        assert released.status == 200
        (second,) = (await (await _claim(client, "c1")).json())["tasks"]
        assert second["claim"] == 2 and second["lease"] != first["lease"]
        stale = await client.post(FINISH, headers=CONSUMER, json={
            "consumer_id": "c1", "task_id": task_id, "outcome": "failed",
            "lease": first["lease"]})
        assert stale.status == 409
    async with running_producer(settings) as client:  # a restarted producer
        beat = await (await client.post(HEARTBEAT, headers=CONSUMER, json={
            "consumer_id": "c1", "leases": {task_id: second["lease"]}})).json()
        assert beat["renewed"] == [task_id]


async def test_claims_are_capped_per_consumer(repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(_settings(db_url, max_claims_per_consumer=3)) as client:
        for number in range(8):
            assert (await _submit(client, f"j{number}")).status == 201
        greedy = await (await _claim(client, "greedy", slots=1000)).json()
        assert len(greedy["tasks"]) == 3
        more = await _claim(client, "greedy", slots=5)
        assert more.status == 422 and (await more.json())["field"] == "slots"
        # Another consumer still gets work; a finished task frees one place.
        assert len((await (await _claim(client, "fair", slots=2)).json())["tasks"]) == 2
        task = greedy["tasks"][0]
        await client.post(FINISH, headers=CONSUMER, json={
            "consumer_id": "greedy", "task_id": task["id"], "outcome": "failed",
            "reason": "x", "lease": task["lease"]})
        assert len((await (await _claim(client, "greedy", slots=5)).json())["tasks"]) == 1


async def test_unknown_testers_are_refused_at_claim_and_submit(repo: Repository,
                                                               db_url: DbUrl) -> None:
    async with running_producer(_settings(db_url)) as client:
        submitted = await _submit(client, "j1", tester="made-up")
        assert submitted.status == 422
        assert (await submitted.json())["field"] == "tester"
        claimed = await _claim(client, "c1", testers=("demo", "made-up"))
        assert claimed.status == 422
        body = await claimed.json()
        assert body["field"] == "testers" and "BISECT_TESTERS" in body["error"]
        # The builtin compass tester and the configured ones are known.
        assert (await _claim(client, "c1", testers=("compass", "demo"))).status == 200
    assert sum((await repo.count_by_status()).values()) == 0
