"""The producer's HTTP edge as an attacker meets it (issue 15, finding 4), on a real producer
process: per-route body limits before any body is read, a deadline on a slow body, idle and
half-sent connections closed, and the process's memory flat under 100 large posts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.private_db import free_port
from common.repository import Repository
from common.settings import DbUrl

ROOT = Path(__file__).resolve().parents[2]
API_TOKEN = "edge-api-token"
CONSUMER_TOKEN = "edge-consumer-token"
HEADER_TIMEOUT_S = 0.5
BODY_TIMEOUT_S = 0.5


@dataclass
class Producer:
    process: subprocess.Popen[bytes]
    port: int

    def rss_kb(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")


def _wait_ready(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"producer exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("producer not ready")


@pytest.fixture
def producer(repo: Repository, db_url: DbUrl, tmp_path: Path) -> Iterator[Producer]:
    port = free_port()
    env = {**os.environ, "BISECT_DB_URL": db_url.to_url(), "BISECT_API_TOKENS": API_TOKEN,
           "BISECT_CONSUMER_TOKENS": CONSUMER_TOKEN, "BISECT_HOST": "127.0.0.1",
           "BISECT_PORT": str(port), "BISECT_DISCOVERY": "false",
           "BISECT_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
           "BISECT_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S), "BISECT_LOG_FORMAT": "json",
           "BISECT_WRITER_HEARTBEAT_S": "0.5"}
    with open(tmp_path / "producer.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "producer.main"], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(port, process)
        yield Producer(process, port)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _closed_by_server(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    """Whether the server closes the connection (EOF, maybe after an answer) in time."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(65536):
                pass
        return True
    except (TimeoutError, ConnectionResetError):
        return False


def _head(path: str, length: int, token: str = API_TOKEN) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


async def _status(reader: asyncio.StreamReader, timeout_s: float) -> int:
    async with asyncio.timeout(timeout_s):
        line = await reader.readline()
    return int(line.split()[1])


@pytest.mark.timeout(120)
async def test_idle_and_half_sent_connections_are_closed(producer: Producer) -> None:
    idle = [await _open(producer.port) for _ in range(200)]
    half = [await _open(producer.port) for _ in range(50)]
    for _, writer in half:  # a slowloris: a request line, one header, then nothing
        writer.write(b"GET /api/v1/tasks HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
    limit = HEADER_TIMEOUT_S * 3 + 2
    results = await asyncio.gather(*[_closed_by_server(r, limit) for r, _ in idle + half])
    assert all(results), f"{results.count(False)} of {len(results)} connections still open"
    for _, writer in idle + half:
        writer.close()
    # A connection that sends its request in time is served as always.
    reader, writer = await _open(producer.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert await _status(reader, 5) == 200
    text = (await asyncio.wait_for(reader.read(), 5)).decode()
    closed = next(line for line in text.splitlines()
                  if line.startswith("bisect_http_slow_connections_closed_total "))
    assert float(closed.split()[1]) >= 250
    writer.close()


@pytest.mark.timeout(120)
async def test_slow_body_gets_408_at_its_deadline(producer: Producer) -> None:
    reader, writer = await _open(producer.port)
    writer.write(_head("/api/v1/tasks", 1000) + b'{"bad_job_id": ')
    await writer.drain()
    started = time.monotonic()
    assert await _status(reader, BODY_TIMEOUT_S + 5) == 408
    assert time.monotonic() - started < BODY_TIMEOUT_S + 4
    assert await _closed_by_server(reader, 5)
    writer.close()


@pytest.mark.timeout(120)
async def test_hundred_large_posts_are_refused_before_their_body(producer: Producer) -> None:
    """100 authenticated 4 MB posts to a route that takes 64 KiB, 100 unauthenticated ones:
    every one is answered before its body is sent, and the producer's memory stays flat."""
    before = producer.rss_kb()
    conns = [await _open(producer.port) for _ in range(200)]
    for number, (_, writer) in enumerate(conns):
        token = API_TOKEN if number % 2 else "wrong-token"
        writer.write(_head("/api/v1/tasks", 4_000_000, token) + b"{" + b" " * 1000)
        await writer.drain()
    statuses = await asyncio.gather(*[_status(reader, 10) for reader, _ in conns])
    assert sorted(set(statuses)) == [403, 413], statuses
    for _, writer in conns:
        writer.close()
    grown_mb = (producer.rss_kb() - before) / 1024
    assert grown_mb < 40, f"producer RSS grew {grown_mb:.0f} MB"


@pytest.mark.timeout(120)
async def test_chunked_body_over_the_route_limit_is_413(producer: Producer) -> None:
    reader, writer = await _open(producer.port)
    writer.write((f"POST /api/v1/internal/claim HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {CONSUMER_TOKEN}\r\n"
                  "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
    chunk = b"x" * 16384
    try:
        for _ in range(64):  # 1 MiB, far over the claim route's 64 KiB
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
    except ConnectionError:
        pass  # the producer answered and closed before the end: what we want
    assert await _status(reader, 10) == 413
    writer.close()
