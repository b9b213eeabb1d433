"""``bisect-cli`` as a process against an in-process producer on the real database."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from common.models import Step, Verdict
from common.repository import Repository
from common.settings import DbUrl
from tests.integration.test_dashboard import ERR, Seeded, seed, sha
from tests.producer_support import API_TOKEN, CONSUMER, producer_settings, running_producer

ROOT = Path(__file__).resolve().parents[2]


def _env(client: TestClient[Any, Any] | None, token: str | None = API_TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BISECT_")}
    if client is not None:
        env["BISECT_PRODUCER_URL"] = str(client.make_url(""))
    if token:
        env["BISECT_API_TOKEN"] = token
    return env


async def _start(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "producer.cli", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def cli(client: TestClient[Any, Any] | None, *args: str, token: str | None = API_TOKEN
              ) -> tuple[int, str, str]:
    proc = await _start(_env(client, token), *args)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert "Traceback" not in err.decode()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_submit_list_show_report_counts(repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(producer_settings(db_url)) as client:
        seeded = await seed(client, repo)
        code, out, _ = await cli(client, "submit", "ext-9", ERR, "--priority", "5",
                                 "--repo-url", "https://git.example/x.git", "--bad-commit",
                                 "abc1234", "--good", "abc0000")
        assert code == 0 and out.startswith("created task ") and "(status wait)" in out
        new_id = out.split()[2]
        code, out, _ = await cli(client, "submit", "ext-9", ERR, "--repo-url",
                                 "https://git.example/x.git", "--bad-commit", "abc1234")
        assert code == 0 and out.startswith(f"task {new_id} exists already for job ext-9")
        assert "(status wait): no new task" in out and "ignored" not in out
        code, out, _ = await cli(client, "submit", "ext-9", ERR, "--priority", "99",
                                 "--good", "abc0001", "--repo-url",
                                 "https://git.example/x.git", "--bad-commit", "abc1234")
        assert code == 0 and f"task {new_id} exists already" in out
        assert "the options of this submit (--priority, --good) were ignored" in out

        code, out, _ = await cli(client, "list")
        header, *rows = out.splitlines()
        assert header.split()[:4] == ["ID", "STATUS", "PRI", "SUITE"]
        assert len(rows) == 5 and any(row.startswith(new_id) for row in rows)
        running = next(r for r in rows if r.startswith(seeded.running))
        assert "processing" in running and "3 of ~8" in running and "left" not in running
        code, out, _ = await cli(client, "list", "--status", "completed")
        assert len(out.splitlines()) == 3 and seeded.completed in out

        code, out, _ = await cli(client, "--json", "list", "--limit", "1", "--all")
        listed = json.loads(out)
        assert code == 0 and len(listed["tasks"]) == 5 and listed["next_cursor"] is None
        code, out, _ = await cli(client, "list", "--limit", "1")
        assert "more tasks" in out

        code, out, _ = await cli(client, "show", seeded.completed)
        assert code == 0
        assert f'first bad:    {sha("c3")} ("lib: drop bar()")' in out
        assert "confidence:   97.0%" in out
        steps = out.split("DETAIL")[1].strip().splitlines()
        assert [line.split()[2] for line in steps] == ["good", "skip", "good", "bad"]
        assert "2 (2 bad)" in steps[3] and "103" in steps[3]
        code, out, _ = await cli(client, "show", seeded.waiting, "--json")
        assert json.loads(out)["task"]["id"] == seeded.waiting

        code, out, _ = await cli(client, "report", seeded.completed)
        assert code == 0 and out.startswith("Greeting,") and "bisection log:" in out
        code, out, _ = await cli(client, "counts")
        assert code == 0 and "completed   2" in out and "total       5" in out
        code, out, _ = await cli(client, "counts", "--json")
        assert json.loads(out)["counts"]["wait"] == 2


async def test_refusals_and_unreachable_producer(repo: Repository, db_url: DbUrl,
                                                 tmp_path: Path) -> None:
    async with running_producer(producer_settings(db_url)) as client:
        seeded = await seed(client, repo)
        code, out, err = await cli(client, "retry", seeded.completed)
        assert (code, out) == (1, "")
        assert err.startswith("bisect-cli: refused (HTTP 409): ") and err.count("\n") == 1
        code, _, err = await cli(client, "submit", "1", "a b")
        assert code == 1 and "(field: error_id)" in err
        code, _, err = await cli(client, "submit", "1", ERR, token=None)
        assert code == 1 and "HTTP 401" in err and "(field: Authorization)" in err
        code, _, err = await cli(client, "report", seeded.running)
        assert code == 1 and "HTTP 409" in err and "is processing" in err
        code, _, err = await cli(client, "show", "999")
        assert code == 1 and "HTTP 404" in err

        token_file = tmp_path / "token"
        token_file.write_text(API_TOKEN + "\n")
        code, out, _ = await cli(client, "cancel", seeded.waiting, "--token-file",
                                 str(token_file), token=None)
        assert (code, out.strip()) == (0, f"task {seeded.waiting}: cancelled")
        code, _, err = await cli(client, "cancel", "1", "--token-file", str(tmp_path / "none"))
        assert code == 2 and "cannot read --token-file" in err
        code, out, _ = await cli(client, "retry", seeded.waiting)
        assert (code, out.strip()) == (0, f"task {seeded.waiting}: wait")

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out, err = await cli(None, "--url", f"http://127.0.0.1:{port}", "counts")
    assert (code, out) == (3, "")
    assert err.startswith(f"bisect-cli: cannot reach the producer at http://127.0.0.1:{port}")
    assert err.count("\n") == 1
    code, _, err = await cli(None, "list", "--url", "ftp://x")
    assert code == 2 and "must start with http" in err
    code, _, err = await cli(None, "show", "abc")
    assert code == 2 and "is not a task id" in err


async def _finish_running(client: TestClient[Any, Any], repo: Repository,
                          seeded: Seeded) -> None:
    await repo.record_step(Step(task_id=int(seeded.running), attempt=1, seq=2,
                                commit=sha("e3"), verdict=Verdict.BAD, runs=3, bad_runs=3,
                                job_id="j-77", duration_ms=2_000))
    await repo.update_progress(int(seeded.running), current_step=4, steps_estimate=8,
                               candidates_left=1)
    answer = await client.post("/api/v1/internal/finish", headers=CONSUMER, json={
        "consumer_id": "c1", "task_id": seeded.running, "lease": seeded.running_lease,
        "outcome": "completed",
        "result": {"bad_commit": sha("e3"), "confidence": 0.9, "verification": "held",
                   "subject": "evil change"}})
    assert answer.status == 200


async def test_watch_follows_a_task_to_the_end(repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(producer_settings(db_url)) as client:
        seeded = await seed(client, repo)
        proc = await _start(_env(client), "watch", seeded.running, "--interval", "0.2")
        assert proc.stdout is not None
        lines: list[str] = []
        while not any(line.startswith("processing: step 3 of ~8") for line in lines):
            lines.append((await asyncio.wait_for(proc.stdout.readline(), 30)).decode())
        assert lines[0].startswith(f"step 1: {sha('e1')[:12]} good")
        await _finish_running(client, repo, seeded)
        rest, err = await asyncio.wait_for(proc.communicate(), 30)
        text = "".join(lines) + rest.decode()
        assert proc.returncode == 0, err.decode()
        assert f"step 3: {sha('e3')[:12]} bad , runs 3 (3 bad), job j-77, 2s" in text
        assert text.rstrip().endswith(f'completed: first bad commit {sha("e3")} ("evil change")')

        await client.post(f"/api/v1/tasks/{seeded.waiting}/cancel",
                          headers={"Authorization": f"Bearer {API_TOKEN}"})
        code, out, _ = await cli(client, "watch", seeded.waiting, "--json")
        watched = json.loads(out.splitlines()[-1])["task"]
        # compass-ci's four statuses: a cancel is stored as failed, with its reason.
        assert code == 4 and (watched["status"], watched["end_reason"]) == ("failed",
                                                                             "cancelled")
        code, out, _ = await cli(client, "watch", seeded.waiting)
        assert code == 4 and out.strip().startswith("cancelled")


async def test_retry_fresh_and_forget_verdicts(repo: Repository, db_url: DbUrl) -> None:
    from common.models import StoredVerdict

    url = "https://git.example/x"
    await repo.record_verdict(StoredVerdict(repo_url=url, commit="c1", tester_fingerprint="f",
                                            error_id=ERR, verdict=Verdict.SKIP, runs=0))
    async with running_producer(producer_settings(db_url)) as client:
        code, out, _ = await cli(client, "forget-verdicts", url, ERR)
        assert code == 0 and out.startswith("forgot 1 stored verdicts"), out
        code, out, err = await cli(client, "retry", "--fresh", "123")
        assert code != 0 and "123" in err  # no such task: refused, named
    assert await repo.verdicts_in_scope(url, "f", ERR) == []
