"""The recorder's event handling and the run-to-finish decision, without a database."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from common.errors import DatabaseUnavailable
from common.models import Culprit, FinishOutcome, Step, StoredVerdict, Verdict
from common.repository import Repository
from consumer import profiles
from consumer import recorder as recorder_module
from consumer.client import ClaimedTask
from consumer.engine.spec import DEFAULT_DETERMINISTIC_RUN_BUDGET
from consumer.recorder import InvalidEvent, Recorder, RecorderScope
from consumer.runner import STOP_SHUTDOWN, RunResult, SpecError, build_spec, decide
from consumer.settings import ConsumerSettings, TimeoutAction

SCOPE = RecorderScope(task_id=7, attempt=3, repo_url="/repo", tester_fingerprint="fp",
                      error_id="err.1", bad_job_id="job9")


class FakeRepo:
    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.verdicts: list[StoredVerdict] = []
        self.progress: list[dict[str, int]] = []
        self.culprits: list[Culprit] = []
        self.testing: list[dict[str, Any]] = []
        self.regressions: list[tuple[str, dict[str, Any]]] = []
        self.fail = False

    async def record_step(self, step: Step) -> None:
        if self.fail:
            raise DatabaseUnavailable("down")
        self.steps.append(step)

    async def record_verdict(self, verdict: StoredVerdict) -> None:
        self.verdicts.append(verdict)

    async def update_progress(self, task_id: int, **progress: int) -> None:
        self.progress.append({"task_id": task_id, **progress})

    async def update_testing(self, task_id: int, **now: str) -> None:
        self.testing.append({"task_id": task_id, **now})

    async def record_culprit(self, culprit: Culprit) -> None:
        self.culprits.append(culprit)

    async def record_regression(self, errid: str, **fields: Any) -> None:
        self.regressions.append((errid, fields))


def make() -> tuple[Recorder, FakeRepo]:
    repo = FakeRepo()
    return Recorder(cast(Repository, repo), SCOPE), repo


STEP = {"event": "step", "seq": 1, "commit": "c1", "verdict": "bad", "runs": 2, "bad_runs": 2,
        "duration_s": 1.5, "job_id": None, "result_root": "/rr", "detail": "x", "reused": False}


async def test_step_becomes_a_row_with_the_claim_as_attempt() -> None:
    rec, repo = make()
    await rec.handle(STEP)
    step, = repo.steps
    assert (step.task_id, step.attempt, step.seq, step.commit) == (7, 3, 1, "c1")
    assert step.verdict is Verdict.BAD and step.runs == 2 and step.duration_ms == 1500
    assert step.job_id is None and step.result_root == "/rr"


@pytest.mark.parametrize("bad", [
    {"event": "step", "commit": "c", "verdict": "bad"},               # no seq
    {**STEP, "verdict": "maybe"}, {**STEP, "commit": ""}, {**STEP, "seq": "one"},
    {**STEP, "duration_s": "slow"}, {"event": "result"},
    {"event": "result", "status": "found", "first_bad_commit": None}, {"no": "event"},
])
async def test_malformed_events_are_rejected(bad: dict[str, Any]) -> None:
    rec, repo = make()
    with pytest.raises(InvalidEvent):
        await rec.handle(bad)
    assert not repo.steps


async def test_unknown_and_informational_events_are_ignored() -> None:
    rec, repo = make()
    await rec.handle({"event": "started", "repo_url": "/r", "bad_commit": "b"})
    await rec.handle({"event": "range", "good": ["a"], "bad": "b", "candidates": 3})
    await rec.handle({"event": "future_thing"})
    assert not repo.steps and not repo.progress


async def test_verdicts_are_stored_once_with_scope() -> None:
    rec, repo = make()
    verdict = {"event": "verdict", "commit": "c1", "tester_fingerprint": "fp",
               "error_id": None, "verdict": "good", "runs": 1, "bad_runs": 0, "job_id": "j"}
    await rec.handle(verdict)
    await rec.handle(verdict)
    stored, = repo.verdicts
    assert (stored.repo_url, stored.error_id, stored.tester_fingerprint) == (
        "/repo", "err.1", "fp")
    assert stored.verdict is Verdict.GOOD and stored.task_id == 7 and stored.job_id == "j"


async def test_progress_flood_is_coalesced_and_the_last_one_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(recorder_module.time, "monotonic", lambda: clock[0])
    rec, repo = make()
    for tested in range(1, 51):
        await rec.handle({"event": "progress", "tested": tested, "candidates_left": 60 - tested,
                          "est_steps_left": 2})
    assert len(repo.progress) == 1
    await rec.flush()
    assert repo.progress[-1] == {"task_id": 7, "current_step": 50, "steps_estimate": 52,
                                 "candidates_left": 10}
    clock[0] += 1
    await rec.handle({"event": "progress", "tested": 51, "candidates_left": 1,
                      "est_steps_left": 0})
    assert repo.progress[-1]["current_step"] == 51


async def test_database_outage_does_not_stop_recording() -> None:
    rec, repo = make()
    repo.fail = True
    await rec.handle(STEP)
    assert rec.write_errors == 1
    assert rec.unwritten == 1
    repo.fail = False
    await rec.handle({**STEP, "seq": 2})
    # The row the outage held back is written first, then the new one: nothing is lost.
    assert [s.seq for s in repo.steps] == [1, 2]
    assert rec.unwritten == 0


async def test_regression_only_for_found() -> None:
    rec, repo = make()
    await rec.handle({"event": "result", "status": "ambiguous", "candidates": ["a", "b"]})
    await rec.record_regression("/repo", compass_job=True)
    assert not repo.culprits and not repo.regressions
    await rec.handle({"event": "result", "status": "found", "first_bad_commit": "c1",
                      "confidence": 0.9})
    # A task outside compass-ci: bisect-task's culprit row only.
    await rec.record_regression("/repo")
    culprit, = repo.culprits
    assert (culprit.errid, culprit.first_bad_commit, culprit.bisect_task_id, culprit.git_url,
            culprit.bad_job_id, culprit.confidence) == ("err.1", "c1", 7, "/repo", "job9", 0.9)
    assert culprit.found_at > 0 and not repo.regressions
    # A compass-ci job: compass-ci's regression row too, whitelisted only when discovered.
    await rec.record_regression("/repo", compass_job=True, discovered=True, category="build")
    assert repo.regressions == [("err.1", {"bad_job_id": "job9", "category": "build",
                                           "whitelist_new": True})]


FOUND = {"event": "result", "status": "found", "first_bad_commit": "c1", "subject": "s",
         "author": "a", "date": "d", "candidates": ["c1"], "tested": ["c0"],
         "verification": {"held": True, "detail": "ok"}, "confidence": 0.97,
         "runner_up": None, "runs": 6, "reason": None, "first_bad_job_id": "j5",
         "first_result_root": "/rr5", "head": {"commit": "h"}}


def test_decide_found() -> None:
    finish = decide(RunResult(FOUND, 0), work_dir="/w", timeout_action=TimeoutAction.FAIL)
    assert finish.outcome is FinishOutcome.COMPLETED
    assert finish.result == {
        "bad_commit": "c1", "first_bad_id": "j5", "first_result_root": "/rr5",
        "work_dir": "/w", "confidence": 0.97, "verification": "held",
        "verification_detail": "ok", "subject": "s", "author": "a", "date": "d",
        "candidates": ["c1"], "runs": 6, "head": {"commit": "h"}, "tested": ["c0"]}
    not_held = decide(RunResult({**FOUND, "verification": {"held": False}}, 0), work_dir="/w",
                      timeout_action=TimeoutAction.FAIL)
    assert not_held.result["verification"] == "not_held"
    skipped = decide(RunResult({**FOUND, "verification": None}, 0), work_dir="/w",
                     timeout_action=TimeoutAction.FAIL)
    assert skipped.result["verification"] == "skipped"


@pytest.mark.parametrize(("run", "outcome", "reason"), [
    (RunResult({"status": "ambiguous", "candidates": ["aaaa", "bbbb"]}, 1), FinishOutcome.FAILED,
     "ambiguous: 2 candidates aaaa bbbb"),
    (RunResult({"status": "not_reproduced", "reason": "bad commit tests good"}, 1),
     FinishOutcome.FAILED, "not_reproduced: bad commit tests good"),
    (RunResult({"status": "no_good", "reason": "no_good: none in 1000"}, 1), FinishOutcome.FAILED,
     "no_good: none in 1000"),
    (RunResult(None, 2, last_stderr="boom"), FinishOutcome.FAILED,
     "engine exited 2 without a result: boom"),
    (RunResult(None, -9), FinishOutcome.FAILED, "engine exited -9 without a result"),
    (RunResult(None, -15, timed_out=True), FinishOutcome.FAILED, "timeout"),
    (RunResult(None, -15, stop_reason=STOP_SHUTDOWN), FinishOutcome.RELEASED,
     "consumer shutting down"),
    (RunResult(FOUND, -15, stop_reason="cancelled"), FinishOutcome.RELEASED, "cancelled"),
    (RunResult(None, -15, stop_reason="lease_lost"), None, "lease_lost"),
    # The engine answers SIGTERM with an "error" result; that is our doing, not the task's.
    (RunResult({"status": "error", "reason": "terminated by SIGTERM"}, 2, timed_out=True),
     FinishOutcome.FAILED, "timeout"),
    (RunResult({"status": "error", "reason": "terminated by SIGTERM"}, 2,
               stop_reason=STOP_SHUTDOWN), FinishOutcome.RELEASED, "consumer shutting down"),
    (RunResult(FOUND, 0, stop_reason=STOP_SHUTDOWN), FinishOutcome.COMPLETED, ""),
])
def test_decide(run: RunResult, outcome: FinishOutcome | None, reason: str) -> None:
    finish = decide(run, work_dir="/w", timeout_action=TimeoutAction.FAIL)
    assert (finish.outcome, finish.reason) == (outcome, reason)


def test_timeout_can_release_for_retry() -> None:
    finish = decide(RunResult(None, -15, timed_out=True), work_dir="/w",
                    timeout_action=TimeoutAction.RETRY)
    assert (finish.outcome, finish.reason) == (FinishOutcome.RELEASED, "timeout")


def test_build_spec() -> None:
    settings = ConsumerSettings.from_env({"BISECT_CACHE_DIR": "/cache"})
    task = ClaimedTask(id=7, claim=2, bad_job_id="j", error_id="e.1", git_url="/repo",
                       known_bad_commit="bad", good_commit=None, tester="demo",
                       extra={"limits": {"run_budget": 9}})
    profile = profiles.TesterProfile("demo", "command", {"kind": "command", "command": ["t"]},
                                     slots=2)
    known = [StoredVerdict("/repo", "c0", "fp", "e.1", Verdict.GOOD, job_id="j0")]
    spec = build_spec(task, profile, settings=settings, known_verdicts=known, work_dir="/w/7-2")
    assert spec == {
        "task_id": 7, "repo_url": "/repo", "bad_commit": "bad", "good_commit": None,
        "error_id": "e.1", "tester": {"kind": "command", "command": ["t"], "name": "demo"},
        # 4 hours (BISECT_TASK_TIMEOUT_S) less 5 %: the engine answers before it is killed
        "limits": {"run_budget": 9, "slots": 2, "time_budget_s": 4 * 3600 * 0.95},
        "known_verdicts": [{"commit": "c0", "verdict": "good", "runs": 1, "bad_runs": 0,
                            "job_id": "j0"}],
        "cache_dir": "/cache", "work_dir": "/w/7-2"}
    with pytest.raises(SpecError, match="git_url"):
        build_spec(ClaimedTask(id=1, claim=1, bad_job_id="j", error_id="e"), profile,
                   settings=settings, known_verdicts=[], work_dir="/w")


@pytest.mark.parametrize(("asked", "spent"), [
    (None, 2000),  # the tester's budget is the default...
    (300, 300),  # ...a task may ask for fewer runs...
    (5000, 2000),  # ...never for more
    ("many", "many"),  # not a number: the engine rejects it, naming limits.run_budget
])
def test_the_testers_run_budget_is_the_default_and_the_cap(asked: object, spent: object
                                                           ) -> None:
    settings = ConsumerSettings.from_env({"BISECT_CACHE_DIR": "/cache"})
    limits = {} if asked is None else {"run_budget": asked}
    task = ClaimedTask(id=7, claim=2, bad_job_id="j", error_id="e.1", git_url="/repo",
                       known_bad_commit="bad", tester="demo", extra={"limits": limits})
    profile = profiles.TesterProfile("demo", "command", {"kind": "command", "command": ["t"]},
                                     run_budget=2000)
    spec = build_spec(task, profile, settings=settings, known_verdicts=[], work_dir="/w")
    assert spec["limits"]["run_budget"] == spent
    assert spec["tester"] == {"kind": "command", "command": ["t"], "name": "demo"}


@pytest.mark.parametrize(("asked", "runs"), [(None, 40), (20, 20), (None, None)])
def test_a_testers_reproduce_runs_is_the_default_a_task_may_change(
        asked: int | None, runs: int | None) -> None:
    settings = ConsumerSettings.from_env({"BISECT_CACHE_DIR": "/cache"})
    limits = {} if asked is None else {"reproduce_runs": asked}
    task = ClaimedTask(id=7, claim=2, bad_job_id="j", error_id="e.1", git_url="/repo",
                       known_bad_commit="bad", tester="demo", extra={"limits": limits})
    profile = profiles.TesterProfile("demo", "command", {"command": ["t"]},
                                     reproduce_runs=None if runs is None else 40)
    spec = build_spec(task, profile, settings=settings, known_verdicts=[], work_dir="/w")
    assert spec["limits"].get("reproduce_runs") == runs
    assert "reproduce_runs" not in spec["tester"]  # not part of how a commit is judged


def test_a_testers_run_budget_does_not_lift_gits_search_cap() -> None:
    settings = ConsumerSettings.from_env({"BISECT_CACHE_DIR": "/cache"})
    task = ClaimedTask(id=7, claim=2, bad_job_id="j", error_id="e.1", git_url="/repo",
                       known_bad_commit="bad", tester="demo", extra={"limits": {"flaky": False}})
    for budget, spent in ((2000, DEFAULT_DETERMINISTIC_RUN_BUDGET), (10, 10)):
        profile = profiles.TesterProfile("demo", "command", {"command": ["t"]},
                                         run_budget=budget)
        spec = build_spec(task, profile, settings=settings, known_verdicts=[], work_dir="/w")
        assert spec["limits"]["flaky"] is False and spec["limits"]["run_budget"] == spent


@pytest.mark.parametrize(("asked", "task_timeout", "budget"), [
    (None, None, 4 * 3600 * 0.95),  # the consumer's timeout less 5 %...
    (None, 600, 540),  # ...at least a minute...
    (None, 90, 45),  # ...but never more than half
    (1800, None, 1800),  # a task may ask for less time...
    (10**6, None, 4 * 3600 * 0.95),  # ...never for more
    (1800, 1200, 1140),  # its own timeout bounds it too
    ("soon", None, "soon"),  # not a number: the engine rejects it, naming the field
])
def test_the_engine_answers_before_the_task_times_out(
        asked: object, task_timeout: int | None, budget: object) -> None:
    settings = ConsumerSettings.from_env({"BISECT_CACHE_DIR": "/cache"})
    limits = {} if asked is None else {"time_budget_s": asked}
    task = ClaimedTask(id=7, claim=2, bad_job_id="j", error_id="e.1", git_url="/repo",
                       known_bad_commit="bad", tester="demo", extra={"limits": limits},
                       timeout=task_timeout)
    profile = profiles.TesterProfile("demo", "command", {"command": ["t"]})
    spec = build_spec(task, profile, settings=settings, known_verdicts=[], work_dir="/w")
    assert spec["limits"]["time_budget_s"] == budget


def test_a_site_that_retries_timeouts_sets_no_time_budget() -> None:
    """BISECT_TIMEOUT_ACTION=retry lets a long bisection go on over attempts."""
    settings = ConsumerSettings.from_env({"BISECT_CACHE_DIR": "/cache",
                                          "BISECT_TIMEOUT_ACTION": "retry"})
    task = ClaimedTask(id=7, claim=2, bad_job_id="j", error_id="e.1", git_url="/repo",
                       known_bad_commit="bad", tester="demo")
    profile = profiles.TesterProfile("demo", "command", {"command": ["t"]})
    spec = build_spec(task, profile, settings=settings, known_verdicts=[], work_dir="/w")
    assert "time_budget_s" not in spec["limits"]


def test_build_spec_for_a_compass_task_carries_database_and_scheduler() -> None:
    settings = ConsumerSettings.from_env({
        "BISECT_DB_URL": "mysql://u:p%40ss@db:3306/bisect",
        "BISECT_SCHEDULER_URL": "http://scheduler:3000/"})
    task = ClaimedTask(id=7, claim=1, bad_job_id="123", error_id="e.1", git_url="https://g/x",
                       known_bad_commit="bad", tester="compass")
    profile = settings.testers["compass"]
    spec = build_spec(task, profile, settings=settings, known_verdicts=[], work_dir="/w")
    assert spec["bad_job_id"] == "123"
    assert spec["scheduler_url"] == "http://scheduler:3000"
    assert spec["db_url"] == "mysql://u:p%40ss@db:3306/bisect"
    assert "token" not in json.dumps(spec).lower()


async def test_the_commit_under_test_the_phase_and_the_posterior_are_recorded() -> None:
    rec, repo = make()
    await rec.handle({"event": "testing", "commit": "c1", "phase": "search"})
    assert repo.testing == [{"task_id": 7, "commit": "c1", "phase": "search"}]
    await rec.handle({**STEP, "phase": "search"})
    await rec.handle({"event": "progress", "tested": 1, "candidates_left": 9,
                      "est_steps_left": 4, "posterior": [["c2", 0.6], ["c3", 0.25]]})
    first, second = repo.steps
    assert first.phase == "search" and first.posterior == ()
    assert (second.seq, second.posterior) == (first.seq, (("c2", 0.6), ("c3", 0.25)))
    with pytest.raises(InvalidEvent):
        await rec.handle({"event": "progress", "tested": 1, "posterior": [["c2", "x"]]})
