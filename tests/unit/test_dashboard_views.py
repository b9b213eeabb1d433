"""The dashboard's words and picture from a task and its steps, and its sign-in plumbing."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from common.models import Step, Task, TaskStatus, Verdict
from producer import bisection_picture, bisection_view, dashboard
from producer.sessions import LoginLimiter, SessionStore, csrf_ok


def _task(status: str = "processing", **fields: Any) -> Task:
    fields.setdefault("project", "linux")
    return Task(id=1, bad_job_id="42", error_id="e.1", status=TaskStatus(status),
                known_bad_commit="b" * 40, **fields)


def _step(seq: int, commit: str, verdict: Verdict, runs: int = 1, bad_runs: int = 0) -> Step:
    return Step(task_id=1, attempt=1, seq=seq, commit=commit * 40 if len(commit) == 1
                else commit, verdict=verdict, runs=runs, bad_runs=bad_runs)


def test_phase_follows_what_the_steps_show() -> None:
    assert bisection_view.phase(_task("wait"), []) == "waiting for a consumer"
    assert bisection_view.phase(_task(), []) == "checking the bad commit"
    bad_only = [_step(0, "b", Verdict.BAD), _step(1, "c", Verdict.BAD)]
    assert bisection_view.phase(_task(), bad_only) == "finding a good commit"
    found = [*bad_only, _step(2, "g", Verdict.GOOD)]
    searching = _task(current_step=3, steps_estimate=7, candidates_left=9)
    assert bisection_view.phase(searching, found) == "searching, 9 candidates left"
    done = _task(current_step=6, steps_estimate=6, candidates_left=1)
    retest = [*found, _step(3, "c", Verdict.BAD)]
    assert bisection_view.phase(done, retest) == "verifying the culprit"
    head = [*found, _step(3, "h", Verdict.BAD)]
    assert bisection_view.phase(done, head) == "checking HEAD"
    assert bisection_view.phase(_task("verifying"), []) == (
        "verifying (a status of another service)")
    assert bisection_view.phase(_task("failed", end_reason="cancelled"), []) == "cancelled"


def test_progress_counts_steps_and_the_range_is_real() -> None:
    steps = [_step(0, "b", Verdict.BAD), _step(1, "g", Verdict.GOOD)]
    task = _task(current_step=2, steps_estimate=9, candidates_left=40)
    assert bisection_view.progress(task, steps) == "step 2 of ~9"
    assert bisection_view.progress(_task("completed", current_step=13, steps_estimate=13,
                                         candidates_left=1), []) == "13 steps"
    assert bisection_view.progress(_task("wait"), []) == "not started"
    assert bisection_view.range_text(task, steps) == f"{'g' * 12}..{'b' * 12} (good commit found)"
    assert bisection_view.range_text(_task(), steps[:1]) == (
        f"up to {'b' * 12} (looking for a good commit)")
    given = _task(good_commit="a" * 40)
    assert bisection_view.range_text(given, []) == f"{'a' * 12}..{'b' * 12} (good commit given)"


def test_result_and_names() -> None:
    done = _task("completed", bad_commit="c" * 40, confidence=0.912,
                 extra={"result": {"subject": "fix: <oops>"}})
    summary = bisection_view.result_summary(done)
    assert (summary.kind, summary.commit, summary.subject, summary.confidence) == (
        "found", "c" * 12, "fix: <oops>", "91.2%")
    assert bisection_view.result_summary(_task("failed", last_error="no good")).text == "no good"
    name = bisection_view.task_name(_task(project=None, git_url="https://x/y/repo.git"))
    assert (name.repository, name.error_id, name.job) == ("repo", "e.1", "42")
    assert bisection_view.status_label(_task("failed", end_reason="cancelled")) == "cancelled"


def test_strip_orders_tested_commits_by_history_and_marks_the_culprit() -> None:
    # find_good walked back from the bad commit; the search then narrowed from both ends.
    steps = [_step(0, "b", Verdict.BAD), _step(1, "p", Verdict.BAD), _step(2, "g", Verdict.GOOD),
             _step(3, "m", Verdict.GOOD), _step(4, "s", Verdict.SKIP), _step(5, "c", Verdict.BAD),
             _step(6, "c", Verdict.BAD, runs=2, bad_runs=2), _step(7, "h", Verdict.BAD)]
    task = _task("completed", bad_commit="c" * 40, extra={"result": {"tested": [
        {"commit": "h" * 40, "phase": "head"}]}})
    picture = bisection_picture.build(task, steps)
    assert [p.commit[0] for p in picture.points] == ["g", "m", "s", "c", "p", "b", "h"]
    xs = [p.x for p in picture.points]
    assert xs == sorted(xs) and picture.known_bad is None
    culprit = next(p for p in picture.points if p.culprit)
    assert culprit.runs == 3 and culprit.runs_text == "3 runs" and not picture.flaky
    assert picture.boundary_x is not None and picture.boundary_x < culprit.x
    assert next(p for p in picture.points if p.commit[0] == "h").head


def test_strip_of_a_flaky_search_shows_mixed_runs_and_the_result_probabilities() -> None:
    steps = [_step(0, "b", Verdict.BAD, 3, 2), _step(1, "g", Verdict.GOOD, 4),
             _step(2, "c", Verdict.BAD, 6, 2), _step(3, "r", Verdict.GOOD, 4, 0)]
    task = _task("completed", bad_commit="c" * 40, confidence=0.9,
                 extra={"result": {"runner_up": {"commit": "r" * 40, "probability": 0.08}}})
    picture = bisection_picture.build(task, steps)
    assert picture.flaky and [b.label for b in picture.bars] == ["90%", "8%"]
    culprit = next(p for p in picture.points if p.culprit)
    assert culprit.verdict == "flaky" and culprit.runs_text == "2/6 bad"
    running = bisection_picture.build(_task(good_commit="a" * 40), [])
    assert running.given_good == "a" * 40 and running.known_bad == "b" * 40
    assert not running.empty and not running.points


def test_sessions_expire_and_csrf_tokens_must_match() -> None:
    now = [0.0]
    store = SessionStore(clock=lambda: now[0])
    session_id, session = store.create("token-1")
    assert session_id != "token-1" and store.get(session_id) == session
    assert csrf_ok(session, session.csrf) and not csrf_ok(session, "other")
    assert not csrf_ok(None, session.csrf) and not csrf_ok(session, None)
    now[0] += 8 * 24 * 3600
    assert store.get(session_id) is None and store.get("unknown") is None


def test_login_limiter_counts_per_client_within_the_window() -> None:
    now = [0.0]
    limiter = LoginLimiter(clock=lambda: now[0], attempts=2, window_s=10)
    assert limiter.allow("a") is None and limiter.allow("a") is None
    assert limiter.allow("a") == 10 and limiter.allow("b") is None
    now[0] = 10.5
    assert limiter.allow("a") is None


def test_templates_escape_every_value_through_aiohttp_jinja2() -> None:
    app = web.Application()
    dashboard.setup(app)
    for env in (aiohttp_jinja2.get_env(app), dashboard.ENVIRONMENT):
        html = env.get_template("message.html").render(
            page_title="<b>t</b>", message="<script>alert(1)</script>", live=None,
            live_status=None, signed_in=False)
        assert "<script>alert(1)</script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert dashboard.JS in html  # our own script, inline and unescaped (CSP-hashed)
