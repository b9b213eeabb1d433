"""The dashboard pages and the plain-text report, through the HTTP test client on the real
database. ``seed`` is shared with the CLI and browser tests."""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient

from common.models import Step, Task, TaskStatus, Verdict
from common.repository import Repository
from common.settings import DbUrl
from producer.report import render_report
from tests.producer_support import (
    CONSUMER,
    WRITE,
    failed_job,
    producer_settings,
    running_producer,
)

ERR = "last_state.test.pkgbuild.exit_code.1"
EVIL_ERR = "<script>alert('err')</script>"
EVIL_JOB = "<img src=x onerror=alert(1)>"
LOG_LINE = "foo.c:12: undefined reference to `bar' <b>"
FLAKY_ERR = "dmesg.kernel_BUG_at_kernel/sched/core.c"
EVIL_PHASE = "<i>odd_phase</i>"  # a phase a newer engine might send: shown as it is, escaped
# The flaky search's steps: (commit label, verdict, runs, bad runs, phase), and the culprit
# probabilities after each search step, converging on f4 ("f2" is never tested: not on the
# strip; "<good side>" is the engine's "not in the range" hypothesis).
FLAKY_STEPS: list[tuple[str, Verdict, int, int, str | None]] = [
    ("f-bad", Verdict.BAD, 3, 2, "check_bad"), ("f1", Verdict.GOOD, 4, 0, "find_good"),
    ("f5", Verdict.BAD, 4, 1, "search"), ("f3", Verdict.GOOD, 6, 0, "search"),
    ("f4", Verdict.BAD, 6, 2, "search"), ("f3b", Verdict.GOOD, 8, 0, "verify")]
FLAKY_POSTERIORS: dict[str, list[tuple[str, float]]] = {
    "f5": [("f5", 0.30), ("f4", 0.25), ("f2", 0.20), ("f3", 0.15), ("<good side>", 0.10)],
    "f3": [("f4", 0.55), ("f5", 0.25), ("f2", 0.0), ("<good side>", 0.05)],
    "f4": [("f4", 0.88), ("f5", 0.08), ("f3b", 0.03)],
    "f3b": [("f4", 0.93), ("f5", 0.05), ("f3b", 0.005)],
}


def sha(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()


@dataclass(frozen=True)
class Seeded:
    completed: str  # compass-ci task, bisected to sha("c3")
    running: str  # processing, step 3 of ~8, evil error id and job id
    waiting: str  # outside compass-ci, never claimed
    flaky: str  # completed by a flaky search: mixed runs, a runner-up
    running_lease: str  # what a finish of the running task must present


async def _claim(client: TestClient[Any, Any]) -> dict[str, Any]:
    answer = await client.post("/api/v1/internal/claim", headers=CONSUMER, json={
        "consumer_id": "c1", "slots": 1, "testers": ["compass"]})
    (task,) = (await answer.json())["tasks"]
    return task


def _commit(label: str) -> str:
    return label if label.startswith("<") else sha(label)


async def _steps(repo: Repository, task: dict[str, Any],
                 steps: list[tuple[str, Verdict, int, int, str | None]],
                 posteriors: dict[str, list[tuple[str, float]]] | None = None) -> None:
    for seq, (label, verdict, runs, bad_runs, phase) in enumerate(steps):
        posterior = (posteriors or {}).get(label, [])
        await repo.record_step(Step(
            task_id=int(task["id"]), attempt=task["claim"], seq=seq, commit=sha(label),
            verdict=verdict, runs=runs, bad_runs=bad_runs, job_id=f"10{seq}",
            result_root=f"/result/10{seq}", duration_ms=61_000 + seq,
            detail=LOG_LINE if verdict is Verdict.BAD else None,
            phase=phase,
            posterior=tuple((_commit(c), p) for c, p in posterior)))


async def _finish(client: TestClient[Any, Any], task: dict[str, Any],
                  result: dict[str, Any]) -> None:
    finished = await client.post("/api/v1/internal/finish", headers=CONSUMER, json={
        "consumer_id": "c1", "task_id": task["id"], "lease": task["lease"],
        "outcome": "completed", "result": result})
    assert finished.status == 200, await finished.text()


async def seed(client: TestClient[Any, Any], repo: Repository) -> Seeded:
    """Four tasks: one completed with a four-step timeline, one running, one waiting, and
    one completed by a flaky search."""
    await repo.insert_job_rows([failed_job(42, ERR, commit=sha("bad")),
                                failed_job(43, FLAKY_ERR, commit=sha("f-bad"))])
    submits = [
        {"bad_job_id": 42, "error_id": ERR, "priority": 900, "good_commit": sha("good")},
        {"bad_job_id": "ext-7", "error_id": EVIL_ERR, "priority": 800,
         "repo_url": "https://git.example/evil.git", "bad_commit": sha("evil-bad")},
        {"bad_job_id": "ext-8", "error_id": "stderr.warning_unused", "priority": 1,
         "repo_url": "https://git.example/other.git", "bad_commit": sha("other-bad")},
        {"bad_job_id": 43, "error_id": FLAKY_ERR, "priority": 850},
    ]
    ids = []
    for body in submits:
        answer = await client.post("/api/v1/tasks", json=body, headers=WRITE)
        assert answer.status == 201, await answer.text()
        ids.append((await answer.json())["task"]["id"])

    done = await _claim(client)
    assert done["id"] == ids[0]
    # Steps of a row written before phases were recorded: no phase, no posterior.
    await _steps(repo, done, [("c1", Verdict.GOOD, 2, 0, None), ("c2", Verdict.SKIP, 2, 0, None),
                              ("c4", Verdict.GOOD, 2, 0, None), ("c3", Verdict.BAD, 2, 2, None)])
    await repo.update_progress(int(done["id"]), current_step=4, steps_estimate=4,
                               candidates_left=1)
    await _finish(client, done, {
        "bad_commit": sha("c3"), "first_bad_id": "103", "first_result_root": "/result/103",
        "confidence": 0.97, "verification": "held",
        "verification_detail": "parent good 2/2, commit bad 2/2",
        "subject": "lib: drop bar()", "author": "Ann Dev <ann@example.org>",
        "date": "2024-05-01", "head": {"commit": sha("head"), "verdict": "bad"},
        "test_command": ["make", "check", "TESTS=a b"]})

    flaky = await _claim(client)
    assert flaky["id"] == ids[3]
    await _steps(repo, flaky, FLAKY_STEPS, FLAKY_POSTERIORS)
    await _finish(client, flaky, {
        "bad_commit": sha("f4"), "confidence": 0.93, "verification": "held",
        "subject": "sched: race in wakeup", "runner_up": {"commit": sha("f5"),
                                                          "probability": 0.05},
        "tested": [{"commit": sha(label), "verdict": "good", "phase": phase} for label, phase in (
            ("f-bad", "check_bad"), ("f1", "find_good"), ("f5", "search"), ("f3", "search"),
            ("f4", "search"), ("f3b", "search"))]})

    running = await _claim(client)
    assert running["id"] == ids[1]
    for seq, (label, phase) in enumerate((("e1", "find_good"), ("e2", EVIL_PHASE))):
        await repo.record_step(Step(
            task_id=int(running["id"]), attempt=running["claim"], seq=seq, commit=sha(label),
            verdict=Verdict.GOOD, job_id=EVIL_JOB, duration_ms=5_000, phase=phase))
    await repo.update_progress(int(running["id"]), current_step=3, steps_estimate=8,
                               candidates_left=12)
    # What the consumer records when its engine starts the next test.
    await repo.update_testing(int(running["id"]), commit=sha("e-now"), phase="search")
    return Seeded(completed=ids[0], running=ids[1], waiting=ids[2], flaky=ids[3],
                  running_lease=running["lease"])


async def test_dashboard_lists_tasks_with_names_phases_results_and_escaping(
        repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(producer_settings(db_url)) as client:
        seeded = await seed(client, repo)
        root = await client.get("/", allow_redirects=False)
        assert root.status == 302 and root.headers["Location"] == "/dashboard"
        page = await client.get("/dashboard")
        assert page.status == 200 and page.content_type == "text/html"
        assert "script-src 'sha256-" in page.headers["Content-Security-Policy"]
        html = await page.text()
        rows = html.split('id="live-rows">')[1].split("</tbody>")[0]
        # Names tell tasks apart: repository, error id, job.
        assert "<b>proj</b>" in rows and f'<span class="mono">{ERR}</span>' in rows
        assert 'job <span class="mono">42</span>' in rows
        assert 'job <span class="mono">43</span>' in rows
        for status in ("completed", "processing", "wait"):
            assert f'class="badge s-{status}">{status}<' in rows
        # The result column: culprit, subject, confidence.
        assert f'<span class="culprit mono">{sha("c3")[:12]}</span>' in rows
        assert "lib: drop bar()" in rows and "confidence 97.0%" in rows
        assert "confidence 93.0%" in rows
        # The phase in words and progress in steps (never candidates).
        # The running task: the phase and the commit under test the consumer recorded.
        now = sha("e-now")
        assert ("searching, 12 candidates left<small>step 3 of ~8</small><small class=\"testing\">"
                f'testing <span class="mono" title="{now}">{now[:12]}</span></small></div>') in rows
        assert rows.count('class="testing"') == 1  # only the running task tests something
        assert "waiting for a consumer<small>not started</small>" in rows
        assert "finished<small>4 steps</small>" in rows
        assert " left<small>" not in rows.replace("candidates left<small>", "")
        assert re.search(r'class="count s-processing[^"]*" [^>]*><b>1</b>', html)
        assert EVIL_ERR not in html and "&lt;script&gt;alert(&#39;err&#39;)" in html
        for task_id in (seeded.completed, seeded.running, seeded.waiting, seeded.flaky):
            assert f"/dashboard/tasks/{task_id}" in html


async def test_unknown_statuses_are_shown_as_they_are(repo: Repository, db_url: DbUrl) -> None:
    """A status bisect-task does not know (another service's, e.g. compass-ci's verifying)
    is listed, counted and shown, never a 500."""
    async with running_producer(producer_settings(db_url)) as client:
        seeded = await seed(client, repo)
        await repo.db.execute("UPDATE bisect SET bisect_status = 'verifying' WHERE id = %s",
                              (int(seeded.waiting),))
        html = await (await client.get("/dashboard")).text()
        assert 'class="badge s-other">verifying<' in html
        assert "verifying (a status of another service)" in html
        assert "<span>verifying</span>" in html  # its own count card
        page = await client.get(f"/dashboard/tasks/{seeded.waiting}")
        assert page.status == 200 and "verifying" in await page.text()
        listed = await client.get("/dashboard", params={"status": "verifying"})
        assert listed.status == 200 and seeded.waiting in await listed.text()


async def test_dashboard_filters_groups_and_pages(repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(producer_settings(db_url)) as client:
        seeded = await seed(client, repo)
        html = await (await client.get("/dashboard", params={"status": "wait"})).text()
        assert seeded.waiting in html and seeded.completed not in html
        html = await (await client.get("/dashboard", params={"error_id": EVIL_ERR})).text()
        assert seeded.running in html and seeded.waiting not in html
        assert 'value="&lt;script&gt;' in html  # the filter box echoes it escaped
        group = (await (await client.get(f"/api/v1/tasks/{seeded.running}")).json()
                 )["task"]["group_key"]
        html = await (await client.get("/dashboard", params={"group": group})).text()
        assert seeded.running in html and seeded.completed not in html
        assert f"/dashboard?group={group}" in html

        first = await (await client.get("/dashboard", params={"limit": "2"})).text()
        older = re.search(r'href="(/dashboard\?[^"]*cursor=[^"]+)">older', first)
        assert older is not None
        second = await (await client.get(older.group(1).replace("&amp;", "&"))).text()
        rows = second.split('id="live-rows">')[1].split("</tbody>")[0]
        assert seeded.completed in rows and seeded.waiting not in rows

        bad = await client.get("/dashboard", params={"status": "<nope>"})
        assert bad.status == 422
        assert "status: must be a status word" in await bad.text()
        assert "<nope>" not in await bad.text()

        live = await (await client.get("/dashboard/live", params={"status": "processing"})).json()
        assert "step 3 of ~8" in live["parts"]["live-rows"] and live["final"] is False
        assert seeded.waiting not in live["parts"]["live-rows"]


async def test_task_page_shows_picture_range_timeline_result_and_report(
        repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(producer_settings(db_url)) as client:
        seeded = await seed(client, repo)
        page = await client.get(f"/dashboard/tasks/{seeded.completed}")
        assert page.status == 200
        html = await page.text()
        assert sha("good") in html and sha("bad") in html
        assert f"{sha('good')[:12]}..{sha('bad')[:12]} (good commit given)" in html
        timeline = html.split('id="live-timeline">')[1].split("</tbody>")[0]
        assert timeline.count("<tr>") == 4
        for label, verdict in (("c1", "good"), ("c2", "skip"), ("c4", "good"), ("c3", "bad")):
            assert f'title="{sha(label)}">{sha(label)[:12]}' in timeline
            assert f'class="badge v-{verdict}">{verdict}<' in timeline
        assert "103" in timeline and "1m 01s" in timeline and "2 (2 bad)" in timeline
        assert "97.0%" in html and "held" in html and "parent good 2/2" in html
        assert "lib: drop bar()" in html and "Ann Dev &lt;ann@example.org&gt;" in html
        assert "data-live" not in html  # completed: no polling
        assert "Greeting," in html and "bisection log:" in html
        assert "undefined reference to `bar&#39; &lt;b&gt;" in html
        # The strip: the given good commit, then the tested ones in history order.
        strip = html.split('<svg id="strip"')[1].split("</svg>")[0]
        order = [sha(label)[:7] for label in ("good", "c1", "c4", "c2", "c3")]
        positions = [strip.index(f">{label}<") for label in order]
        assert positions == sorted(positions)
        assert ">first bad<" in strip and strip.count('class="point v-') == 4
        assert 'class="point v-bad culprit"' in strip and "2 runs" in strip
        assert "<script" not in strip
        # A deterministic search: no posterior rows; steps without a recorded phase show "-".
        assert 'id="posterior"' not in html and "culprit probability after" not in html
        assert "per-step culprit probabilities" not in html
        assert _phases(timeline) == ["-"] * 4

        running = await (await client.get(f"/dashboard/tasks/{seeded.running}")).text()
        assert f'data-live="/dashboard/tasks/{seeded.running}/live"' in running
        assert "searching, 12 candidates left" in running and "step 3 of ~8" in running
        assert f"{sha('e1')[:12]}..{sha('evil-bad')[:12]} (good commit found)" in running
        assert "Greeting," not in running
        assert EVIL_JOB not in running and "&lt;img src=x onerror=alert(1)&gt;" in running
        assert EVIL_ERR not in running
        assert "Sign in with an API token to cancel this task" in running
        summary = running.split('id="live-summary">')[1].split("</dl>")[0]
        assert (f'<dt>Testing now</dt><dd id="testing"><span class="mono" title="{sha("e-now")}">'
                f'{sha("e-now")[:12]}</span></dd>') in summary
        timeline = running.split('id="live-timeline">')[1].split("</tbody>")[0]
        assert _phases(timeline) == ["finding a good commit", "&lt;i&gt;odd phase&lt;/i&gt;"]
        assert EVIL_PHASE not in running
        assert 'id="posterior"' not in running  # no posterior recorded: no rows

        flaky = await (await client.get(f"/dashboard/tasks/{seeded.flaky}")).text()
        strip = flaky.split('<svg id="strip"')[1].split("</svg>")[0]
        assert "culprit probability" in strip and ">93%<" in strip and ">5%<" in strip
        assert "2/6 bad" in strip and "1/4 bad" in strip
        order = [sha(label)[:7] for label in ("f1", "f3", "f3b", "f4", "f5", "f-bad")]
        positions = [strip.index(f">{label}<") for label in order]
        assert positions == sorted(positions)
        assert _phases(flaky.split('id="live-timeline">')[1].split("</tbody>")[0]) == [
            "checking the bad commit", "finding a good commit", "searching", "searching",
            "searching", "verifying the culprit"]
        _assert_posterior_rows(strip)

        missing = await client.get("/dashboard/tasks/999")
        assert missing.status == 404 and "no task with id 999" in await missing.text()


def _phases(timeline: str) -> list[str]:
    return re.findall(r'<td data-label="Phase" class="num"><div>(.*?)</div></td>', timeline)


def _cells(row: str) -> list[tuple[int, str, str]]:
    """(x, commit, percent) of each cell of a posterior row, left to right."""
    found = re.findall(r'<rect class="p-cell(?: likeliest)?" x="(\d+)"[^>]*><title>after step \d+: '
                       r'([0-9a-f]{40}) ([^<]+)</title>', row)
    return [(int(x), commit, percent) for x, commit, percent in found]


def _assert_posterior_rows(strip: str) -> None:
    """The flaky task's rows: one per step with a posterior (steps 3 to 6 of the timeline),
    each commit at its strip position, the mass converging on the culprit f4."""
    assert 'id="posterior"' in strip and "culprit probability after each step" in strip
    rows = strip.split('<g id="posterior"')[1].split('class="posterior-row"')[1:]
    assert [re.search(r'data-step="(\d+)"', r).group(1) for r in rows  # type: ignore[union-attr]
            ] == ["3", "4", "5", "6"]
    assert "after step 6 (verifying the culprit)" in rows[3]
    culprit = sha("f4")
    point_x = {commit: int(x) for commit, x in re.findall(
        r'<title>#\d+ ([0-9a-f]{40}):[^<]*</title>\s*<circle cx="(\d+)"', strip)}
    for row, labels in zip(rows, FLAKY_POSTERIORS.values(), strict=True):
        cells = _cells(row)
        assert all(x + 12 == point_x[commit] for x, commit, _ in cells)  # under its point
        on_strip = {sha(c) for c, _ in labels if not c.startswith("<") and c != "f2"}
        assert {commit for _, commit, _ in cells} == on_strip
        assert sha("f2") not in row and "&lt;good side&gt;" not in row
    # f4's cell darkens step after step; the first row keeps 30% off the strip (f2, good side).
    f4 = [next(p for _, c, p in _cells(row) if c == culprit) for row in rows]
    assert f4 == ["25%", "55%", "88%", "93%"]
    opacities = [float(re.search(  # type: ignore[union-attr]
        rf'fill-opacity="([0-9.]+)"><title>after step \d+: {culprit}', row).group(1))
        for row in rows]
    assert opacities == sorted(opacities) and opacities[-1] > 0.8
    assert ">+30%<" in rows[0] and ">+5%<" in rows[1]
    assert 'text-anchor="end"' not in rows[2]  # all of its mass is on the strip
    assert "&lt;1%" in rows[3]  # f3b's 0.5 %: shown, not rounded to nothing
    assert re.search(rf'class="p-cell likeliest"[^>]*><title>after step 6: {culprit} ', rows[3])


async def test_task_live_fragment_follows_progress(repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(producer_settings(db_url)) as client:
        seeded = await seed(client, repo)
        url = f"/dashboard/tasks/{seeded.running}/live"
        before = await (await client.get(url)).json()
        assert before["status"] == "processing" and before["final"] is False
        assert "step 3 of ~8" in before["parts"]["live-summary"]
        await repo.update_progress(int(seeded.running), current_step=4, steps_estimate=8,
                                   candidates_left=5)
        await repo.record_step(Step(task_id=int(seeded.running), attempt=1, seq=2,
                                    commit=sha("e3"), verdict=Verdict.BAD))
        after = await (await client.get(url)).json()
        assert "step 4 of ~8" in after["parts"]["live-summary"]
        assert "searching, 5 candidates left" in after["parts"]["live-summary"]
        assert sha("e-now") in after["parts"]["live-summary"]
        assert after["parts"]["live-timeline"].count("<tr>") == 3
        assert after["parts"]["live-picture"].count('class="point v-') == 3
        assert EVIL_JOB not in after["parts"]["live-timeline"]
        assert (await client.get("/dashboard/tasks/999/live")).status == 404


async def test_recorded_phase_and_commit_win_over_the_inference(
        repo: Repository, db_url: DbUrl) -> None:
    """What the consumer recorded is shown (the steps would say "searching"); a row with
    nothing recorded (written before the columns existed) falls back to the inference."""
    async with running_producer(producer_settings(db_url)) as client:
        seeded = await seed(client, repo)
        url = f"/dashboard/tasks/{seeded.running}/live"
        for phase, words in (("verify", "verifying the culprit"), ("head", "checking HEAD"),
                             ("check_head", "checking HEAD"),
                             ("find_good", "finding a good commit")):
            await repo.update_testing(int(seeded.running), commit=sha(f"t-{phase}"),
                                      phase=phase)
            summary = (await (await client.get(url)).json())["parts"]["live-summary"]
            assert f'<dd id="phase">{words}</dd>' in summary
            assert f'title="{sha(f"t-{phase}")}"' in summary
            rows = await (await client.get("/dashboard", params={"status": "processing"})).text()
            assert f"{words}<small>step 3 of ~8</small>" in rows and sha(f"t-{phase}") in rows
        picture = (await (await client.get(url)).json())["parts"]["live-picture"]
        assert 'id="testing-mark"' not in picture  # a commit not on the strip yet
        # A retest of a commit on the strip: the strip marks it.
        await repo.update_testing(int(seeded.running), commit=sha("e2"), phase="search")
        picture = (await (await client.get(url)).json())["parts"]["live-picture"]
        x = re.search(rf'#2 {sha("e2")}:[^<]*</title>\s*<circle cx="(\d+)"', picture)
        assert x is not None and f'<circle cx="{x.group(1)}" cy="58" r="21"' in picture
        assert 'id="testing-mark"' in picture
        await repo.update_testing(int(seeded.running), commit=EVIL_JOB, phase=EVIL_PHASE)
        page = await (await client.get(f"/dashboard/tasks/{seeded.running}")).text()
        assert "&lt;i&gt;odd phase&lt;/i&gt;" in page and "&lt;img src=x" in page
        assert EVIL_PHASE not in page and EVIL_JOB not in page
        await repo.update_testing(int(seeded.running), commit="", phase="")
        summary = (await (await client.get(url)).json())["parts"]["live-summary"]
        assert '<dd id="phase">searching, 12 candidates left</dd>' in summary
        assert "Testing now" not in summary


async def test_posterior_rows_of_a_running_flaky_search_are_escaped(
        repo: Repository, db_url: DbUrl) -> None:
    """A running task's live picture grows a row per step with a posterior; whatever the
    engine sent as a phase or a commit is escaped (a commit off the strip is not drawn)."""
    async with running_producer(producer_settings(db_url)) as client:
        seeded = await seed(client, repo)
        await repo.record_step(Step(
            task_id=int(seeded.running), attempt=1, seq=2, commit=sha("e3"), verdict=Verdict.BAD,
            runs=3, bad_runs=1, phase=EVIL_PHASE,
            posterior=((sha("e3"), 0.7), (sha("e1"), 0.2), ("<script>alert(1)</script>", 0.1))))
        live = await (await client.get(f"/dashboard/tasks/{seeded.running}/live")).json()
        picture = live["parts"]["live-picture"]
        assert picture.count('class="posterior-row"') == 1 and 'data-step="3"' in picture
        assert "after step 3 (&lt;i&gt;odd phase&lt;/i&gt;)" in picture
        assert "+10% on 1 commit(s) not on the strip" in picture and ">+10%<" in picture
        assert [commit for _, commit, _ in _cells(picture)] == [sha("e1"), sha("e3")]
        assert "<script>alert" not in picture and "alert(1)" not in picture
        assert EVIL_PHASE not in live["parts"]["live-timeline"]
        page = await (await client.get(f"/dashboard/tasks/{seeded.running}")).text()
        assert 'id="posterior"' in page and "<script>alert(1)" not in page


async def test_report_route(repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(producer_settings(db_url)) as client:
        seeded = await seed(client, repo)
        answer = await client.get(f"/api/v1/tasks/{seeded.completed}/report")
        assert answer.status == 200 and answer.content_type == "text/plain"
        text = await answer.text()
        assert "tree:    https://git.example/proj.git" in text
        assert f'commit:  {sha("c3")} ("lib: drop bar()")' in text
        assert "author:  Ann Dev <ann@example.org>" in text
        assert f"error id: {ERR}" in text
        assert f"log line (job 103):\n    {LOG_LINE}" in text
        assert f"HEAD status: {sha('head')[:12]} verdict: bad" in text
        assert f"git bisect start {sha('bad')} {sha('good')}" in text
        assert f"# skip: [{sha('c2')}] runs 2, job 101, 1m 01s" in text
        assert f"git bisect bad {sha('c3')}" in text
        assert f"# first bad commit: [{sha('c3')}] lib: drop bar()" in text
        assert (f"bisect-run --repo https://git.example/proj.git --bad {sha('bad')} "
                f"--good {sha('good')} --error-id {ERR} -- make check 'TESTS=a b'\n") in text
        assert "GOOD" not in text and "TEST_COMMAND" not in text
        assert "first bad job:  103  result_root /result/103" in text
        assert "bad job:        42  result_root /result/makepkg/" in text

        running = await client.get(f"/api/v1/tasks/{seeded.running}/report")
        assert running.status == 409
        assert (await running.json())["error"].endswith("the report is written when it completes")
        assert (await client.get("/api/v1/tasks/999/report")).status == 404
        doc = await (await client.get("/api/v1/openapi.json")).json()
        assert "text/plain" in doc["paths"]["/api/v1/tasks/{id}/report"]["get"]["responses"]["200"][
            "content"]
        assert "/dashboard/tasks/{id}" in doc["paths"]


def test_report_quotes_the_reproduce_command_for_a_shell() -> None:
    """The "to reproduce" line runs as printed: a shell splits it back into the arguments."""
    task = Task(id=7, bad_job_id="9", error_id="x;$(rm_-rf_~)", status=TaskStatus.COMPLETED,
                git_url="https://git.example/a b", known_bad_commit="abc", bad_commit="abd",
                first_result_root="/r/1;reboot",
                extra={"result": {"test_command": "./repro.sh --fast 'x y'"}})
    steps = [Step(task_id=7, attempt=1, seq=0, commit="abc", verdict=Verdict.BAD),
             Step(task_id=7, attempt=1, seq=1, commit="a00", verdict=Verdict.GOOD)]
    text = render_report(task, steps)
    line = next(li.strip() for li in text.splitlines() if li.strip().startswith("bisect-run"))
    assert shlex.split(line) == [
        "bisect-run", "--repo", "https://git.example/a b", "--bad", "abc", "--good", "a00",
        "--error-id", "x;$(rm_-rf_~)", "--", "sh", "-c", "./repro.sh --fast 'x y'"]
    assert "range:   a00..abc (good commit found by the search)" in text
    assert "submit '/r/1;reboot/job.yaml' upstream_commit=abd" in text
    no_command = render_report(Task(id=8, bad_job_id="9", error_id="e",
                                    status=TaskStatus.COMPLETED, tester="compass"), [])
    assert "tester profile compass recorded no test command" in no_command
    assert "GOOD" not in no_command and "TEST_COMMAND" not in no_command
