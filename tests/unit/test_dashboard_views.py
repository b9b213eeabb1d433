"""The dashboard's words and picture from a task and its steps, and its sign-in plumbing."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from common.models import Step, Task, TaskStatus, Verdict
from producer import (
    bisection_picture,
    bisection_view,
    dashboard,
    dashboard_phase,
    dashboard_posterior,
)
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


def test_recorded_phase_and_commit_are_used_while_processing_only() -> None:
    steps = [_step(0, "b", Verdict.BAD)]  # the inference alone: finding a good commit
    running = _task(phase="verify", current_commit="c" * 40, candidates_left=1)
    assert dashboard_phase.phase(running, steps) == "verifying the culprit"
    assert dashboard_phase.testing_now(running) == "c" * 40
    searching = _task(phase="search", current_commit="c" * 40, candidates_left=7)
    assert dashboard_phase.phase(searching, steps) == "searching, 7 candidates left"
    assert dashboard_phase.phase(_task(phase="check_head"), steps) == "checking HEAD"
    assert dashboard_phase.phase(_task(phase="head"), steps) == "checking HEAD"
    assert dashboard_phase.phase(_task(phase="new_thing"), steps) == "new thing"
    # Nothing recorded (an older row): inferred as before.
    assert dashboard_phase.phase(_task(), steps) == "finding a good commit"
    assert dashboard_phase.testing_now(_task()) is None
    # A finished task keeps the columns of its last test: not shown.
    done = _task("completed", phase="verify", current_commit="c" * 40)
    assert dashboard_phase.phase(done, steps) == "finished"
    assert dashboard_phase.testing_now(done) is None


def test_step_phases_recorded_else_from_the_result() -> None:
    steps = [Step(task_id=1, attempt=1, seq=0, commit="b" * 40, verdict=Verdict.BAD,
                  phase="check_bad"), _step(1, "g", Verdict.GOOD), _step(2, "x", Verdict.GOOD)]
    task = _task("completed", extra={"result": {"tested": [
        {"commit": "g" * 40, "phase": "find_good"}]}})
    assert dashboard_phase.step_phases(task, steps) == [
        "checking the bad commit", "finding a good commit", "-"]


def _flaky_step(seq: int, commit: str, posterior: list[tuple[str, float]]) -> Step:
    return Step(task_id=1, attempt=1, seq=seq, commit=commit * 40, verdict=Verdict.BAD,
                runs=2, bad_runs=1, phase="search",
                posterior=tuple((c * 40 if len(c) == 1 else c, p) for c, p in posterior))


def test_posterior_rows_sit_under_the_strip_at_each_commits_point() -> None:
    steps = [_step(0, "b", Verdict.BAD), _step(1, "g", Verdict.GOOD),
             _flaky_step(2, "m", [("m", 0.5), ("u", 0.3), ("b", 0.2)]),
             _flaky_step(3, "c", [("c", 0.9), ("m", 0.1), ("<good side>", 0.0)])]
    task = _task("completed", bad_commit="c" * 40)
    picture = bisection_picture.build(task, steps)
    phases = dashboard_phase.step_phases(task, steps)
    rows = dashboard_posterior.build(picture, steps, phases)
    at = {p.commit: p.x for p in picture.points}
    assert [r.step_number for r in rows.rows] == [3, 4] and rows.every == 1
    first, last = rows.rows
    assert [c.commit for c in first.cells] == ["m" * 40, "b" * 40]  # strip order; u omitted
    assert all(c.x + dashboard_posterior.CELL_WIDTH // 2 == at[c.commit] for c in first.cells)
    assert (first.elsewhere_count, first.elsewhere_text) == (1, "+30%")
    assert last.elsewhere_count == 1 and last.elsewhere_text == ""  # nothing to say
    assert [c.commit[0] for c in last.cells] == ["c", "m"]  # the newer bad is right
    culprit = next(c for c in last.cells if c.commit == "c" * 40)
    assert culprit.label == "90" and culprit.dark and culprit.opacity > 0.9
    small = next(c for c in last.cells if c.commit == "m" * 40)
    assert 0.08 < small.opacity < culprit.opacity and not small.dark
    assert rows.top >= picture.height and first.y >= rows.top and last.y > first.y
    assert rows.likeliest == "c" * 40  # the newest row's most likely commit
    assert rows.height >= rows.rows[-1].y + dashboard_posterior.ROW_HEIGHT - rows.top


def test_a_deterministic_search_has_no_posterior_rows() -> None:
    steps = [_step(0, "b", Verdict.BAD), _step(1, "g", Verdict.GOOD), _step(2, "c", Verdict.BAD)]
    task = _task("completed", bad_commit="c" * 40)
    picture = bisection_picture.build(task, steps)
    rows = dashboard_posterior.build(picture, steps, dashboard_phase.step_phases(task, steps))
    assert rows.rows == () and rows.height == 0


def test_many_steps_get_a_row_every_kth_step_and_the_last() -> None:
    steps = [_flaky_step(i, "c", [("c", i / 40)]) for i in range(40)]
    picture = bisection_picture.build(_task(), steps)
    rows = dashboard_posterior.build(picture, steps, ["searching"] * 40)
    numbers = [r.step_number for r in rows.rows]
    assert rows.every == 3 and rows.total_steps == 40
    assert len(numbers) <= dashboard_posterior.MAX_ROWS + 1 and numbers[-1] == 40
    assert numbers[:3] == [3, 6, 9] and numbers == sorted(set(numbers))


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
