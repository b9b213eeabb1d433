"""A faithful stand-in for compass-ci's scheduler (test support, not product code).

It answers ``POST /scheduler/v1/jobs/submit`` the way compass-ci's ``compact`` branch does
(compass-ci.md §7.3: a JSON array on success, its 400 and 500 shapes on failure) and writes
each job's row to the real ``jobs`` table three times as the scheduler does (§2.2): an INSERT
at submit (``istage`` 0), a REPLACE at dispatch (``istage`` 1), and a REPLACE at completion with
``errid``, ``j.errid``, ``j.stats`` and the codes. What a job finds is decided by running the
fixture test ``check.sh`` of a local repository at the commit the job asks for: the script
prints the error ids it sees, one per line, and its exit code gives the health.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from common.compass_job import SUBMIT_STRIPPED, job_row, source_of
from common.repository import Repository

REQUIRED_KEYS = ("suite", "tbox_group", "os", "os_version", "my_account", "my_email",
                 "my_name", "my_token")
# What the scheduler removes before it stores a job (dispatch.cr on_job_submit).
NOT_STORED = ("my_email", "my_name", "my_token", "job_token", "secrets")
VERSION = "20250925.8c1d9d29"


@dataclass
class FakeScheduler:
    """The scheduler of one test: ``repo`` is the jobs table it writes."""

    repo: Repository
    dispatch_delay_s: float = 0.02
    run_delay_s: float = 0.02
    submitted: list[dict[str, Any]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _running: set[asyncio.Task[None]] = field(default_factory=set)

    def new_job_id(self) -> int:
        """compass-ci's id shape: yyMMddHHmmss + 3-digit ms + 2-digit worker id, made
        strictly increasing within one fake."""
        stamp = time.strftime("%y%m%d%H%M%S", time.gmtime())
        return int(f"{stamp}{next(self._ids) % 1000:03d}00")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/scheduler/v1/jobs/submit", self.submit)
        app.router.add_post("/submit_job", self.submit)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _cleanup(self, _app: web.Application) -> None:
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def submit(self, request: web.Request) -> web.Response:
        try:
            job = json.loads(await request.text())
        except ValueError:
            return web.json_response({"message": "Invalid JSON in request body"}, status=400)
        if not isinstance(job, dict):
            return web.json_response({"message": "Invalid JSON in request body"}, status=400)
        if not job.get("my_account"):
            return web.Response(status=400, text="Missing required field: my_account")
        missing = [key for key in REQUIRED_KEYS if not job.get(key)]
        if missing:
            return web.json_response([{
                "job_id": "0", "job_state": "submit",
                "message": f"Missing required job key: '{missing[0]}'.\n  from src/job.cr"}],
                status=500)
        self.submitted.append(dict(job))
        stored = {k: v for k, v in job.items()
                  if k not in NOT_STORED and k not in SUBMIT_STRIPPED}
        job_id = self.new_job_id()
        stored["result_root"] = (f"/result/{stored.get('suite')}/fake/{stored.get('tbox_group')}"
                                 f"/{job_id}")
        await self.repo.insert_job_rows([job_row(job_id, stored, stage="submit",
                                                 submit_time=int(time.time()))])
        task = asyncio.get_running_loop().create_task(self._lifecycle(job_id, stored))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return web.json_response([{
            "job_id": str(job_id), "message": "", "version": VERSION, "job_state": "submit",
            "result_root": f"/srv{stored['result_root']}"}])

    async def _lifecycle(self, job_id: int, doc: dict[str, Any]) -> None:
        now = int(time.time())
        await asyncio.sleep(self.dispatch_delay_s)
        await self.repo.insert_job_rows([job_row(job_id, doc, stage="dispatch",
                                                 submit_time=now)], replace=True)
        errids, health = await asyncio.to_thread(run_fixture_test, doc)
        await asyncio.sleep(self.run_delay_s)
        await self.repo.insert_job_rows([job_row(
            job_id, doc, stage="finish", health=health, readiness="complete",
            errids=errids, submit_time=now, stats={e: 1 for e in errids})], replace=True)


def run_fixture_test(doc: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
    """Run the repository's ``check.sh`` at the job's commit: (error ids, health)."""
    source = source_of(doc)
    if source is None or not source.commit:
        return ("last_state.test.makepkg.exit_code.128",), "abort"
    workdir = Path(tempfile.mkdtemp(prefix="fake-compass-"))
    try:
        archive = _git(["git", "-C", source.git_url, "archive", "--format=tar", source.commit])
        if archive is None:
            return ("last_state.test.makepkg.exit_code.128",), "abort"
        _run(["tar", "-x", "-C", str(workdir)], stdin=archive)
        result = _run(["sh", "check.sh"], cwd=workdir)
        errids = tuple(line.strip() for line in result[1].decode().splitlines() if line.strip())
        return errids, ("success" if result[0] == 0 and not errids else "abort")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _git(command: list[str]) -> bytes | None:
    code, out = _run(command)
    return out if code == 0 else None


def _run(command: list[str], *, cwd: Path | None = None,
         stdin: bytes | None = None) -> tuple[int, bytes]:
    import subprocess

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd or "/tmp"),
           "LANG": "C.UTF-8"}
    done = subprocess.run(command, cwd=cwd, input=stdin, capture_output=True, env=env,
                          timeout=60, check=False)
    return done.returncode, done.stdout


def make_fixture_repo(root: Path, n_commits: int, bad_index: int, errid: str, *,
                      flaky_before: str | None = None) -> tuple[Path, list[str]]:
    """A git repository whose ``check.sh`` prints ``errid`` from commit ``bad_index`` on
    (and ``flaky_before`` before it, when given, to give other error ids). Returns the path
    and the commit hashes, oldest first."""
    import subprocess

    repo = root / "fixture.git-src"
    repo.mkdir(parents=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], env=env, check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q", "-b", "main")
    commits = []
    for index in range(n_commits):
        broken = index >= bad_index
        lines = ["#!/bin/sh"]
        if broken:
            lines.append(f"echo '{errid}'")
            lines.append("exit 2")
        elif flaky_before:
            lines.append(f"echo '{flaky_before}'")
        (repo / "check.sh").write_text("\n".join(lines) + "\n")
        (repo / "VERSION").write_text(f"{index}\n")
        git("add", "-A")
        git("commit", "-q", "-m", f"change {index}" + (" (the regression)" if
                                                      index == bad_index else ""))
        commits.append(git("rev-parse", "HEAD"))
    return repo, commits


@contextlib.asynccontextmanager
async def serving(repo: Repository) -> AsyncIterator[tuple[FakeScheduler, str]]:
    """A fake scheduler writing to ``repo``'s jobs table, serving on loopback: (it, its URL)."""
    fake = FakeScheduler(repo)
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield fake, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def create_compass_tables(repo: Repository) -> None:
    """``jobs``, ``bisect`` and ``regression`` exactly as compass-ci's
    sbin/create-manticore-tables.sh makes them (on MariaDB, a column-for-column
    translation), in place of whatever the test database holds."""
    from common.schema import BISECT_AS_COMPASS_CREATES, JOBS, REGRESSION, create_table_ddl

    for table in (JOBS, BISECT_AS_COMPASS_CREATES, REGRESSION):
        await repo.db.execute(f"DROP TABLE IF EXISTS {table.name}")
        await repo.db.execute(create_table_ddl(repo.dialect, table))
