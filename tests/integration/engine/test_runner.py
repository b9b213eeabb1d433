from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from consumer.engine.adaptive import (
    CONSISTENT_CULPRIT_RUNS,
    CONSISTENT_PARENT_RUNS,
    REPRODUCE_USABLE,
    deterministic_run_bound,
)
from consumer.engine.result import ExitCode, Status
from consumer.engine.synthetic import make_repo, plan_history
from tests.integration.engine.helpers import bisect, make_spec, worktrees_of


def _events(events: list[dict[str, object]], kind: str) -> list[dict[str, object]]:
    return [e for e in events if e["event"] == kind]


async def test_linear_found_with_events_and_commit_info(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 64, 40)
    result, events = await bisect(make_spec(repo, tmp_path))
    assert result.status is Status.FOUND and result.exit_code is ExitCode.FOUND
    assert result.first_bad_commit == repo.culprit
    assert result.subject == "synthetic commit 40 (bad)"
    assert result.author == "Synthetic Author <author@example.com>"
    assert result.date is not None and result.date.startswith("2023-")
    assert result.verification is not None and result.verification.held
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and "range" in kinds
    steps = _events(events, "step")
    assert steps[0]["commit"] == repo.head and steps[0]["phase"] == "check_bad"
    searched = [s["commit"] for s in steps if s["phase"] != "verify"]
    assert len(set(searched)) == len(searched), "the search tested a commit twice"
    # Verification retests both sides of the boundary with fresh runs: three times each,
    # since every run agrees with a deterministic test (a lucky flaky one could too).
    verify = [s for s in steps if s["phase"] == "verify"]
    assert {s["commit"] for s in verify} == {repo.culprit, repo.shas[39]}
    retests = CONSISTENT_CULPRIT_RUNS - 1 + CONSISTENT_PARENT_RUNS - 1
    assert result.verification.runs == len(verify) == retests
    assert 0.5 <= result.confidence < 1.0  # a deterministic answer is not 100 % sure
    verdicts = _events(events, "verdict")
    assert len(verdicts) == len(steps)
    testing = _events(events, "testing")
    assert len(testing) == len(steps)  # a line as each test starts
    assert all(v["error_id"] == "E_SYNTH" and len(str(v["tester_fingerprint"])) == 64
               for v in verdicts)
    assert _events(events, "progress")
    assert result.runs == len(steps)
    assert worktrees_of(tmp_path / "cache" / "mirrors") == []


@pytest.mark.parametrize("culprit", [1, 2, 31, 62, 63])
async def test_linear_edges(tmp_path: Path, culprit: int) -> None:
    repo = make_repo(tmp_path / "repo", 64, culprit)
    result, _ = await bisect(make_spec(repo, tmp_path))
    assert result.first_bad_commit == repo.culprit
    assert result.runs <= deterministic_run_bound(64)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_merge_heavy_runs_within_the_deterministic_bound(tmp_path: Path, seed: int) -> None:
    n = 400
    parents = plan_history(n, merges=60, seed=seed)
    picks = [i for i in range(n // 5, n, n // 5) if len(parents[i]) == 1]
    for culprit in picks:
        repo = make_repo(tmp_path / f"repo{culprit}", n, culprit, merges=60, seed=seed)
        result, _ = await bisect(make_spec(repo, tmp_path))
        assert result.first_bad_commit == repo.culprit, (seed, culprit)
        assert result.verification is not None and result.verification.held
        assert result.runs <= deterministic_run_bound(n), (seed, culprit, result.runs)


async def test_good_commit_is_found_by_stepping_back(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 200, 150)
    result, events = await bisect(make_spec(repo, tmp_path, good_commit=None))
    assert result.first_bad_commit == repo.culprit
    finds = [e for e in _events(events, "step") if e["phase"] == "find_good"]
    assert [repo.index(str(e["commit"])) for e in finds] == [198, 197, 195, 191, 183, 167, 135]
    assert result.good_commits == (repo.shas[135],)


async def test_root_commit_bad_is_the_answer(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 10, 0)
    result, _ = await bisect(make_spec(repo, tmp_path, good_commit=None))
    assert result.status is Status.FOUND and result.first_bad_commit == repo.root
    assert result.verification is not None and "root commit" in result.verification.detail


# Both searches: the default one and git's (limits.flaky false), whose verification
# retests the given good commit when the halving ends next to it.
SEARCHES = [pytest.param({}, id="default"), pytest.param({"flaky": False}, id="git")]


@pytest.mark.parametrize("search", SEARCHES)
async def test_a_bad_good_commit_extends_the_search_to_older_commits(
        tmp_path: Path, search: dict[str, object]) -> None:
    repo = make_repo(tmp_path / "repo", 100, 30)
    result, events = await bisect(make_spec(repo, tmp_path, good_commit=repo.shas[50],
                                            limits=search))
    assert result.status is Status.FOUND and result.first_bad_commit == repo.culprit
    assert result.good_commits and repo.index(result.good_commits[0]) < 30
    ranges = _events(events, "range")
    assert len(ranges) == 2 and ranges[0]["good"] == [repo.shas[50]]
    assert result.runs <= 3 * deterministic_run_bound(100)  # two ranges and a walk back


async def test_a_flaky_tests_bad_good_commit_is_stepped_back_from_at_the_measured_rate(
        tmp_path: Path) -> None:
    # The error shows in 80 % of runs from commit 23 on, and the given good commit (50)
    # is after it. The good commit's own runs all showed the error, which once made the
    # walk back take the test for a deterministic one and keep commit 48 after one good
    # run: a bad commit, and the answer stayed good_is_bad (bench/engine_step_back.py,
    # seed 1). The walk now confirms a candidate at the rate the search measured.
    repo = make_repo(tmp_path / "repo", 150, 23, seed=1, flaky_p=0.8)
    env = {"SYNTH_SEED": "1", "SYNTH_COUNT_FILE": str(tmp_path / "runs.count")}
    result, events = await bisect(make_spec(repo, tmp_path, good_commit=repo.shas[50],
                                            tester={"env": env}))
    assert result.status is Status.FOUND and result.first_bad_commit == repo.culprit
    ranges = _events(events, "range")
    assert ranges[0]["good"] == [repo.shas[50]] and len(ranges) >= 2
    older = str(result.good_commits[0])
    assert repo.index(older) < 23
    walked = [e for e in _events(events, "step")
              if e["phase"] == "find_good" and e["commit"] == older]
    assert len(walked) >= 3 and all(e["verdict"] == "good" for e in walked)


async def test_git_search_without_verification_leaves_the_good_commit_untested(
        tmp_path: Path) -> None:
    # No retest, so nothing says the given good commit is bad: the halving's answer, at
    # the little confidence its runs support.
    repo = make_repo(tmp_path / "repo", 40, 0)
    spec = make_spec(repo, tmp_path, good_commit=repo.shas[20],
                     limits={"flaky": False, "verify": False})
    result, _ = await bisect(spec)
    assert result.status is Status.FOUND and result.first_bad_commit == repo.shas[21]
    assert result.verification is None and result.confidence < 0.5


@pytest.mark.parametrize("search", SEARCHES)
async def test_good_is_bad_when_nothing_older_is_good(tmp_path: Path,
                                                      search: dict[str, object]) -> None:
    repo = make_repo(tmp_path / "repo", 40, 0)
    spec = make_spec(repo, tmp_path, good_commit=repo.shas[20],
                     limits={"max_good_search": 4, **search})
    result, _ = await bisect(spec)
    assert result.status is Status.GOOD_IS_BAD and result.exit_code is ExitCode.NO_RESULT
    assert result.first_bad_commit is None
    assert "good commit" in (result.reason or "") and "showed" in (result.reason or "")
    if search:  # git's search says why it did not step back further
        assert "no good commit within 4 first-parent commits" in (result.reason or "")
    assert 0 < result.confidence < 1
    assert result.to_event()["status"] == "good_is_bad"


async def test_no_good_within_the_search_limit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 40, 2)
    spec = make_spec(repo, tmp_path, good_commit=None, limits={"max_good_search": 8})
    result, _ = await bisect(spec)
    assert result.status is Status.NO_GOOD and result.exit_code is ExitCode.NO_RESULT
    assert "no good commit within 8" in (result.reason or "")


async def test_not_reproduced_at_the_bad_commit(tmp_path: Path) -> None:
    # A run that does not show the error is evidence of flakiness, not the end: the bad
    # commit is retested (bounded) before the engine gives up.
    repo = make_repo(tmp_path / "repo", 10, 5)
    result, events = await bisect(make_spec(repo, tmp_path, bad_commit=repo.shas[3]))
    assert result.status is Status.NOT_REPRODUCED
    assert result.runs == REPRODUCE_USABLE == len(_events(events, "step"))
    # The reason says what was tried and what it rules out, and how to try harder.
    reason = result.reason or ""
    assert reason.startswith(f"error E_SYNTH did not reproduce at the bad commit "
                             f"{repo.shas[3][:12]}: none of 15 runs showed it (15 usable); ")
    assert "it shows in under 18 % of runs (95 % bound: limits.reproduce_runs" in reason
    assert "last run: good (exit 0 without E_SYNTH" in reason


async def test_a_rare_error_can_be_given_more_runs_at_the_bad_commit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 10, 5)
    spec = make_spec(repo, tmp_path, bad_commit=repo.shas[3], limits={"reproduce_runs": 4})
    result, _ = await bisect(spec)
    assert result.status is Status.NOT_REPRODUCED and result.runs == 4
    assert "none of 4 runs showed it" in (result.reason or "")
    assert "under 53 % of runs" in (result.reason or "")


async def test_different_error_at_bad_commit_is_not_reproduced(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 10, 5, other_range=[9])
    result, _ = await bisect(make_spec(repo, tmp_path))
    assert result.status is Status.NOT_REPRODUCED
    assert "different error" in (result.reason or "")


async def test_different_error_rule_is_applied(tmp_path: Path) -> None:
    # Commits 10-12 fail with another error: skip by default, good when told so.
    repo = make_repo(tmp_path / "repo", 30, 13, other_range=range(10, 13))
    skip, _ = await bisect(make_spec(repo, tmp_path))
    assert skip.status is Status.AMBIGUOUS
    assert set(skip.candidates) == {repo.shas[i] for i in (10, 11, 12, 13)}
    good, _ = await bisect(make_spec(repo, tmp_path, limits={"different_error": "good"}))
    assert good.status is Status.FOUND and good.first_bad_commit == repo.culprit


async def test_skipped_range_before_culprit_is_ambiguous(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 100, 60, skip_range=range(57, 60))
    result, _ = await bisect(make_spec(repo, tmp_path))
    assert result.status is Status.AMBIGUOUS and result.exit_code is ExitCode.NO_RESULT
    assert set(result.candidates) == {repo.shas[i] for i in (57, 58, 59, 60)}
    assert "untestable" in (result.reason or "")


async def test_known_verdicts_are_reused_but_never_for_the_bad_commit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 64, 40)
    known = [{"commit": repo.head, "verdict": "skip", "runs": 0},  # a timeout: says nothing
             {"commit": repo.shas[32], "verdict": "good", "job_id": "j32"},
             {"commit": repo.shas[10], "verdict": "skip", "runs": 0}]
    result, events = await bisect(make_spec(repo, tmp_path, known_verdicts=known))
    assert result.first_bad_commit == repo.culprit
    reused = [e for e in _events(events, "step") if e["reused"]]
    assert {e["commit"] for e in reused} == {repo.shas[32]}
    steps = _events(events, "step")
    assert steps[0]["commit"] == repo.head and not steps[0]["reused"]
    assert result.runs <= deterministic_run_bound(32)


async def test_fresh_runs_ignore_known_verdicts(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 64, 40)
    known = [{"commit": repo.shas[50], "verdict": "good", "runs": 5}]  # wrong: it is bad
    spec = make_spec(repo, tmp_path, known_verdicts=known, fresh_runs=True)
    result, events = await bisect(spec)
    assert result.first_bad_commit == repo.culprit
    assert not any(e["reused"] for e in _events(events, "step"))


async def test_run_budget_stops_the_search(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 256, 100)
    result, _ = await bisect(make_spec(repo, tmp_path, limits={"run_budget": 4}))
    assert result.status is Status.UNDECIDED and result.runs == 4
    assert result.exit_code is ExitCode.NO_RESULT
    assert "run budget" in (result.reason or "") and "cannot tell" in (result.reason or "")
    result, _ = await bisect(make_spec(repo, tmp_path / "off",
                                       limits={"run_budget": 4, "flaky": False}))
    assert result.status is Status.AMBIGUOUS and result.runs == 4
    assert repo.culprit in result.candidates


async def test_parallel_slots_find_the_same_commit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 300, 217, merges=20, seed=5)
    result, _ = await bisect(make_spec(repo, tmp_path, limits={"slots": 3}))
    assert result.first_bad_commit == repo.culprit
    assert worktrees_of(tmp_path / "cache" / "mirrors") == []
    # k-section spends more runs than halving (for less time); free slots retest while the
    # boundary is verified.
    assert result.runs <= 2 * deterministic_run_bound(300)


async def test_git_search_verifies_with_fresh_runs_and_claims_no_certainty(
        tmp_path: Path) -> None:
    # limits.flaky false (bisect-run --no-flaky): git's halving, then one fresh run each
    # side of the boundary. The runs of a deterministic test are also what a flaky test
    # whose runs agreed by luck gives, so the confidence says what they tell, never 1.
    repo = make_repo(tmp_path / "repo", 1000, 613)
    result, events = await bisect(make_spec(repo, tmp_path, limits={"flaky": False}))
    assert result.first_bad_commit == repo.culprit and result.strategy == "deterministic"
    assert result.runs <= math.ceil(math.log2(1000)) + 3
    assert result.verification is not None and result.verification.held
    assert result.verification.runs == 2 and "retested" in result.verification.detail
    assert f"P(culprit) = {result.confidence:.3f} if the test may be flaky" in (
        result.verification.detail)
    verify = [e["commit"] for e in _events(events, "step") if e["phase"] == "verify"]
    assert verify == [repo.culprit, repo.shas[612]]
    assert 0.5 < result.confidence < 0.9
    assert result.rates is not None and result.rates.before_bad == 0
    assert result.rates.after_runs == result.rates.after_bad > 0
    # Without the boundary's retests the same search tells even less.
    unverified, _ = await bisect(make_spec(repo, tmp_path / "unverified",
                                           limits={"flaky": False, "verify": False}))
    assert unverified.first_bad_commit == repo.culprit and unverified.verification is None
    assert unverified.runs == result.runs - 2
    assert unverified.confidence < result.confidence


async def test_exit_codes_decide_without_error_id(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 50, 33)
    result, _ = await bisect(make_spec(repo, tmp_path, error_id=None))
    assert result.first_bad_commit == repo.culprit


async def test_two_bisections_of_one_repository_at_once(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 120, 70, merges=10, seed=2)
    specs = [make_spec(repo, tmp_path), make_spec(repo, tmp_path, bad_commit=repo.shas[100])]
    (first, _), (second, _) = await asyncio.gather(*(bisect(s) for s in specs))
    assert first.first_bad_commit == second.first_bad_commit == repo.culprit
    assert worktrees_of(tmp_path / "cache" / "mirrors") == []
    assert len(list((tmp_path / "cache" / "mirrors").glob("*.git"))) == 1
