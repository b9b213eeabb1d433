"""``bisect-consumer`` as a process: health port, SIGTERM releases work and exits 0, drain."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from common.settings import DbUrl
from tests.conftest import url_string
from tests.integration.consumer.fakes import (
    FakeProducer,
    journal_lines,
    pid_alive,
    wait_until,
    write_engine,
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(db_url: DbUrl, producer_url: str, tmp_path: Path, mode: str, port: int,
         **extra: str) -> dict[str, str]:
    testers = {"fake": {"kind": "command", "command": ["true"], "mode": mode,
                        "journal": str(tmp_path / "journal")}}
    return {**os.environ, "BISECT_DB_URL": url_string(db_url),
            "BISECT_PRODUCER_URL": producer_url, "BISECT_CONSUMER_ID": "proc-consumer",
            "BISECT_CONSUMER_TOKEN": "tok", "BISECT_TESTERS": json.dumps(testers),
            "BISECT_ENGINE_COMMAND": shlex.join(write_engine(tmp_path)),
            "BISECT_WORK_DIR": str(tmp_path / "work"), "BISECT_CACHE_DIR": str(tmp_path / "c"),
            "BISECT_CONSUMER_HTTP_HOST": "127.0.0.1", "BISECT_CONSUMER_HTTP_PORT": str(port),
            "BISECT_POLL_MIN_S": "0.05", "BISECT_POLL_MAX_S": "0.2",
            "BISECT_KILL_GRACE_S": "1", "BISECT_LOG_FORMAT": "json", **extra}


async def test_sigterm_releases_running_tasks_and_exits_0(
        repo: object, db_url: DbUrl, tmp_path: Path) -> None:
    producer = FakeProducer()
    producer.add(1)
    url = await producer.start()
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "consumer.main",
        env=_env(db_url, url, tmp_path, "hang", port, BISECT_GRACE_S="0.5"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        journal = tmp_path / "journal"
        assert await wait_until(lambda: len(journal_lines(journal)) == 1, 20)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                body = await response.json()
                assert response.status == 200 and body["producer"] == "ok", body
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert "bisect_consumer_slots_busy 1.0" in await response.text()
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        assert [(f["task_id"], f["outcome"]) for f in producer.finishes] == [("1", "released")]
        engine_pid = int(journal_lines(journal)[0][1])
        assert not pid_alive(engine_pid)
        assert b"shutdown_grace_over" in stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await producer.close()


async def test_drain_flag_exits_0_when_done(repo: object, db_url: DbUrl,
                                            tmp_path: Path) -> None:
    producer = FakeProducer()
    producer.add(1)
    producer.add(2)
    url = await producer.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "consumer.main", "--drain",
            env=_env(db_url, url, tmp_path, "found", 0),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        assert sorted((f["task_id"], f["outcome"]) for f in producer.finishes) == [
            ("1", "completed"), ("2", "completed")]
        assert b'"event": "drain_complete"' in stderr
    finally:
        await producer.close()
