"""A retry that asks for fresh runs, and forgetting the stored verdicts of a repository and
error id, over the API on the real database."""

from __future__ import annotations

from common.models import StoredVerdict, Verdict
from common.repository import Repository
from common.settings import DbUrl
from tests.producer_support import CONSUMER, WRITE, producer_settings, running_producer

REPO = "https://git.example/proj"
ERR = "last_state.test.makepkg.exit_code.2"


async def test_forget_verdicts_of_one_repository_and_error(repo: Repository,
                                                           db_url: DbUrl) -> None:
    for commit, url, errid, tester in (("a1", REPO, ERR, "fp1"), ("a2", REPO, ERR, "fp2"),
                                       ("a3", REPO + "-other", ERR, "fp1"),
                                       ("a4", REPO, ERR.upper(), "fp1")):
        await repo.record_verdict(StoredVerdict(repo_url=url, commit=commit,
                                                tester_fingerprint=tester, error_id=errid,
                                                verdict=Verdict.SKIP, runs=0))
    async with running_producer(producer_settings(db_url)) as client:
        missing = await client.delete("/api/v1/verdicts", params={"repo_url": REPO},
                                      headers=WRITE)
        assert missing.status == 422 and (await missing.json())["field"] == "error_id"
        assert (await client.delete("/api/v1/verdicts",
                                    params={"repo_url": REPO, "error_id": ERR})).status == 401
        answer = await client.delete("/api/v1/verdicts", params={
            "repo_url": REPO + "/", "error_id": ERR}, headers=WRITE)
        assert answer.status == 200 and await answer.json() == {"forgotten": 2}
    left = await repo.verdicts_in_scope(REPO + "-other", "fp1", ERR)
    assert [v.commit for v in left] == ["a3"]
    assert [v.commit for v in await repo.verdicts_in_scope(REPO, "fp1", ERR.upper())] == ["a4"]
    assert await repo.verdicts_in_scope(REPO, "fp1", ERR) == []


async def test_a_retry_can_ask_for_fresh_runs(repo: Repository, db_url: DbUrl) -> None:
    settings = producer_settings(db_url, known_testers=frozenset({"demo"}))
    async with running_producer(settings) as client:
        created = await (await client.post("/api/v1/tasks", headers=WRITE, json={
            "bad_job_id": "ext-9", "error_id": ERR, "repo_url": REPO, "bad_commit": "abc1234",
            "tester": "demo"})).json()
        task_id = created["task"]["id"]
        claim = await (await client.post("/api/v1/internal/claim", headers=CONSUMER, json={
            "consumer_id": "c1", "slots": 1, "testers": ["demo"]})).json()
        (claimed,) = claim["tasks"]
        await client.post("/api/v1/internal/finish", headers=CONSUMER, json={
            "consumer_id": "c1", "task_id": task_id, "outcome": "failed",
            "reason": "poisoned by a stored skip", "lease": claimed["lease"]})
        bad = await client.post(f"/api/v1/tasks/{task_id}/retry", headers=WRITE,
                                json={"fresh": "yes"})
        assert bad.status == 422 and (await bad.json())["field"] == "fresh"
        retried = await (await client.post(f"/api/v1/tasks/{task_id}/retry", headers=WRITE,
                                           json={"fresh": True})).json()
        assert retried["task"]["status"] == "wait"
        assert retried["task"]["extra"]["fresh_runs"] is True
        again = await (await client.post("/api/v1/internal/claim", headers=CONSUMER, json={
            "consumer_id": "c1", "slots": 1, "testers": ["demo"]})).json()
        assert again["tasks"][0]["extra"]["fresh_runs"] is True
