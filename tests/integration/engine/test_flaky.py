"""Flaky tests, reuse of verdicts, the head check and parallel slots, on real repositories."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from consumer.engine import testers
from consumer.engine.result import Status
from consumer.engine.runner import run_task
from consumer.engine.synthetic import SyntheticRepo, make_repo
from consumer.engine.verdicts import Outcome, Verdict
from tests.integration.engine.helpers import bisect, make_spec


def _verdicts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last (cumulative) verdict event of each commit, as a consumer would store it."""
    last: dict[str, dict[str, Any]] = {}
    for event in events:
        if event["event"] == "verdict":
            last[event["commit"]] = event
    return [{k: e[k] for k in ("commit", "verdict", "runs", "bad_runs", "job_id")}
            for e in last.values()]


def _flaky_repo(tmp_path: Path) -> SyntheticRepo:
    return make_repo(tmp_path / "repo", 80, 47, merges=6, flaky_p=0.5, other_rate=0.25)


def _flaky_tester(tmp_path: Path, seed: int) -> dict[str, Any]:
    return {"env": {"SYNTH_SEED": str(seed), "SYNTH_COUNT_FILE": str(tmp_path / "count")}}


async def test_flaky_test_found_with_confidence(tmp_path: Path) -> None:
    repo = _flaky_repo(tmp_path)
    spec = make_spec(repo, tmp_path, tester=_flaky_tester(tmp_path, 11),
                     limits={"flaky": True})
    result, events = await bisect(spec)
    assert result.status is Status.FOUND and result.strategy == "adaptive"
    assert result.first_bad_commit == repo.culprit
    # Runs that happen to agree with a deterministic test are reported at what they show.
    assert 0.5 <= result.confidence < 1.0
    assert result.verification is not None and result.verification.runs >= 1
    assert result.runs == len((tmp_path / "count").read_text().splitlines())
    # Every test that started ran to its end: none was cut off by the budget.
    kinds = [e["event"] for e in events]
    assert kinds.count("testing") == kinds.count("step") == result.runs
    # Verdict events are cumulative per commit: their runs add up to every usable or
    # skipped run of the bisection.
    stored = _verdicts(events)
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) == result.runs
    assert sum(v["runs"] for v in stored) <= result.runs
    assert any(v["runs"] > 1 for v in stored)  # weak evidence was retested
    event = result.to_event()
    assert event["confidence"] == result.confidence and event["strategy"] == "adaptive"
    rates = event["rates"]
    assert 0 <= rates["good"] < rates["bad"] <= 1
    # The runs the estimates rest on: every usable run, split at the culprit.
    usable = sum(1 for e in events if e["event"] == "step" and e["verdict"] != "skip")
    assert rates["after_runs"] + rates["before_runs"] == usable
    assert 0 < rates["after_bad"] <= rates["after_runs"]
    assert 0 <= rates["before_bad"] <= rates["before_runs"]


async def test_a_second_bisection_reuses_the_verdicts(tmp_path: Path) -> None:
    repo = _flaky_repo(tmp_path)
    first, events = await bisect(make_spec(repo, tmp_path, tester=_flaky_tester(tmp_path, 5),
                                           limits={"flaky": True}))
    assert first.first_bad_commit == repo.culprit
    second, events2 = await bisect(make_spec(
        repo, tmp_path / "again", tester=_flaky_tester(tmp_path, 6), limits={"flaky": True},
        known_verdicts=_verdicts(events)))
    assert second.first_bad_commit == repo.culprit
    # The search starts from the stored runs; the bad commit's check and the boundary's
    # verification are always fresh runs.
    assert second.runs < first.runs
    assert any(e["reused"] for e in events2 if e["event"] == "step")
    fresh = [e for e in events2 if e["event"] == "step" and not e["reused"]]
    assert {e["phase"] for e in fresh} <= {"check_bad", "verify", "search"}


async def test_a_second_clean_bisection_reuses_the_verdicts(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 300, 123, merges=20)
    first, events = await bisect(make_spec(repo, tmp_path))
    second, _ = await bisect(make_spec(repo, tmp_path / "again",
                                       known_verdicts=_verdicts(events)))
    assert first.first_bad_commit == second.first_bad_commit == repo.culprit
    assert second.runs <= 5  # the bad commit, and a fresh run on each side of the boundary, twice


class FirstRunMisses:
    """The real test, except that the first run of every bad commit but the head passes."""

    def __init__(self, repo: SyntheticRepo, inner: Any) -> None:
        self.repo = repo
        self.inner = inner
        self.seen: set[str] = set()

    async def test(self, commit: str, worktree: Path) -> Outcome:
        outcome: Outcome = await self.inner.test(commit, worktree)
        first = commit not in self.seen
        self.seen.add(commit)
        if first and commit != self.repo.head and outcome.verdict is Verdict.BAD:
            return Outcome(Verdict.GOOD, detail="missed")
        return outcome


async def test_contradicting_runs_are_weighed_not_trusted(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 40, 17)
    spec = make_spec(repo, tmp_path)
    inner = testers.build_tester(spec.tester, testers.TesterContext(error_id=repo.error_id))
    events: list[dict[str, Any]] = []
    result = await run_task(spec, events.append, tester=FirstRunMisses(repo, inner))
    assert result.strategy == "adaptive"
    assert result.status is Status.FOUND and result.first_bad_commit == repo.culprit
    assert result.confidence >= 0.95


async def test_flaky_off_keeps_the_deterministic_answer(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 40, 17)
    spec = make_spec(repo, tmp_path, limits={"verify": "retest", "flaky": False})
    inner = testers.build_tester(spec.tester, testers.TesterContext(error_id=repo.error_id))
    result = await run_task(spec, lambda e: None, tester=FirstRunMisses(repo, inner))
    assert result.strategy == "deterministic"
    assert result.verification is not None and not result.verification.held
    assert result.confidence <= 0.5


class SkipsOnce:
    """The real test, except that run number ``n`` (1-based) of each commit in ``skips``
    fails with an unrelated error (a skip): a test machine broken for one run."""

    def __init__(self, inner: Any, skips: dict[str, int]) -> None:
        self.inner = inner
        self.skips = skips
        self.runs: dict[str, int] = {}

    async def test(self, commit: str, worktree: Path) -> Outcome:
        self.runs[commit] = self.runs.get(commit, 0) + 1
        if self.skips.get(commit) == self.runs[commit]:
            return Outcome(Verdict.SKIP, detail="unrelated error E_OTHER")
        result: Outcome = await self.inner.test(commit, worktree)
        return result


async def test_git_search_repeats_a_skipped_check_and_retest(tmp_path: Path) -> None:
    # A skip says nothing about our error: git's search runs the bad commit's check and the
    # boundary's retests again rather than ending "not reproduced" or "not clean".
    repo = make_repo(tmp_path / "repo", 40, 17)
    spec = make_spec(repo, tmp_path, limits={"flaky": False})
    inner = testers.build_tester(spec.tester, testers.TesterContext(error_id=repo.error_id))
    clean, _ = await bisect(spec)
    events: list[dict[str, Any]] = []
    # The head's first run (the check), and the culprit's and its parent's second (their
    # retests: the halving ran each once).
    tester = SkipsOnce(inner, {repo.head: 1, repo.culprit: 2, repo.shas[16]: 2})
    result = await run_task(make_spec(repo, tmp_path / "skips", limits={"flaky": False}),
                            events.append, tester=tester)
    assert result.status is Status.FOUND and result.first_bad_commit == repo.culprit
    steps = [(e["phase"], e["commit"], e["verdict"]) for e in events if e["event"] == "step"]
    assert [s[2] for s in steps if s[0] == "check_bad"] == ["skip", "bad"]
    assert [(c, v) for phase, c, v in steps if phase == "verify"] == [
        (repo.culprit, "skip"), (repo.culprit, "bad"),
        (repo.shas[16], "skip"), (repo.shas[16], "good")]
    assert result.verification is not None and result.verification.held
    assert result.runs == clean.runs + 3


async def test_head_check_regressed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 90, 30)
    spec = make_spec(repo, tmp_path, bad_commit=repo.shas[60], head_commit=repo.head,
                     limits={"head_check": True})
    result, _ = await bisect(spec)
    assert result.first_bad_commit == repo.culprit
    assert result.head is not None
    assert (result.head.commit, result.head.status, result.head.runs) == (repo.head, "regressed", 1)
    assert result.to_event()["head"] == {"commit": repo.head, "status": "regressed", "runs": 1}


async def test_head_check_fixed_and_unknown(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 90, 30, skip_range=[88])
    fixed_at_head = f'test "$BISECT_COMMIT" = {repo.head} && exit 0; exec ./check.sh'
    spec = make_spec(repo, tmp_path, bad_commit=repo.shas[60],
                     tester={"command": fixed_at_head}, limits={"head_check": repo.head})
    result, _ = await bisect(spec)
    assert result.head is not None and result.head.status == "fixed"
    spec = make_spec(repo, tmp_path / "2", bad_commit=repo.shas[60],
                     limits={"head_check": repo.shas[88]})
    result, _ = await bisect(spec)
    assert result.head is not None and result.head.status == "unknown"


class Concurrency:
    """Counts how many tests run at once."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.now = 0
        self.most = 0

    async def test(self, commit: str, worktree: Path) -> Outcome:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            outcome: Outcome = await self.inner.test(commit, worktree)
            return outcome
        finally:
            self.now -= 1


async def test_four_slots_run_tests_at_once_and_take_less_time(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 400, 251)
    walls: dict[int, float] = {}
    answers: dict[int, str | None] = {}
    most: dict[int, int] = {}
    for slots in (1, 4):
        spec = make_spec(repo, tmp_path / f"s{slots}", tester={"env": {"SYNTH_SLEEP": "0.3"}},
                         limits={"slots": slots})
        context = testers.TesterContext(error_id=repo.error_id)
        tester = Concurrency(testers.build_tester(spec.tester, context))
        started = time.monotonic()
        result = await run_task(spec, lambda e: None, tester=tester)
        walls[slots] = time.monotonic() - started
        answers[slots] = result.first_bad_commit
        most[slots] = tester.most
    assert answers[1] == answers[4] == repo.culprit
    assert most == {1: 1, 4: 4}
    # 1 slot: the bad commit + 9 halvings + 6 verification runs; 4 slots: the check, 3-4
    # rounds of 5-way splits (5 * 5 * 5 * 5 >= 399) and two verification rounds (the three
    # retests of a side run side by side), so about half the time plus fixed costs (clone,
    # worktrees), which weigh more on a loaded machine.
    assert walls[4] <= 0.75 * walls[1], walls


async def test_a_spent_time_budget_ends_with_what_the_runs_say(tmp_path: Path) -> None:
    """No test starts that would likely end after the time budget; the answer is then
    `undecided`, with the likely candidates and the reason, not a killed process."""
    repo = make_repo(tmp_path / "repo", 80, 47, flaky_p=0.3)
    tester = {**_flaky_tester(tmp_path, 3)}
    tester["env"] = {**tester["env"], "SYNTH_SLEEP": "0.2"}
    spec = make_spec(repo, tmp_path, tester=tester, limits={"time_budget_s": 3})
    started = time.monotonic()
    result, events = await bisect(spec)
    took = time.monotonic() - started
    assert result.status is Status.UNDECIDED
    assert result.reason is not None and "time budget of 3 s spent" in result.reason
    assert result.candidates and 5 <= result.runs < 30
    # Every run started before the budget was spent and none ran long after it.
    assert took < 3 + 2.0
    assert result.runs == len((tmp_path / "count").read_text().splitlines())
    # Every test that started ran to its end: none was cut off by the budget.
    kinds = [e["event"] for e in events]
    assert kinds.count("testing") == kinds.count("step") == result.runs
