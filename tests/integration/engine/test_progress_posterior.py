"""The default search tells, after each step, where the culprit probability stands (what
the dashboard draws), on a flaky test as on a deterministic one."""

from __future__ import annotations

from pathlib import Path

from consumer.engine.result import Status
from consumer.engine.synthetic import make_repo
from tests.integration.engine.helpers import bisect, make_spec


async def test_a_flaky_search_reports_its_posterior_after_each_step(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 80, 47, merges=6, flaky_p=0.5)
    spec = make_spec(repo, tmp_path, tester={"env": {"SYNTH_SEED": "11"}})
    result, events = await bisect(spec)
    assert result.status is Status.FOUND and result.first_bad_commit == repo.culprit
    progress = [e for e in events if e["event"] == "progress" and "posterior" in e]
    assert progress, "no posterior in the progress events of a flaky search"
    for event in progress:
        pairs = event["posterior"]
        assert 0 < len(pairs) <= 20
        probabilities = [p for _, p in pairs]
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(0.0 <= p <= 1.0 for p in probabilities) and sum(probabilities) <= 1.0001
    # The mass ends on the culprit.
    assert progress[-1]["posterior"][0][0] == repo.culprit


async def test_a_deterministic_search_converges_on_the_culprit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 60, 31)
    result, events = await bisect(make_spec(repo, tmp_path))
    assert result.status is Status.FOUND
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all("posterior" in e for e in progress)
    culprit, probability = progress[-1]["posterior"][0]
    assert culprit == repo.culprit and probability > 0.5
