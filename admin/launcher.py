"""Start the services as real processes: for the demo and the acceptance and fault tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from common.errors import BisectError


class LaunchError(BisectError):
    """A service did not start or answer in time; the message points at its log."""


def _default_signals() -> None:
    """In the child, before exec: no blocked signals. A mask survives exec, and a service
    started by a caller that blocks SIGTERM (to wait for it with sigwait) would never see
    its own stop signal."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


@dataclass
class ServiceProcess:
    """One service process with its log file. ``module`` is e.g. ``producer.main``."""

    name: str
    module: str
    env: Mapping[str, str]
    log_path: Path
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        environment = {**os.environ, "BISECT_LOG_FORMAT": "json", **self.env}
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args], env=environment,
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_default_signals)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signum)

    def kill_group(self) -> None:
        """SIGKILL the service and everything it started (its subprocesses)."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait(10)

    def wait(self, timeout: float) -> int | None:
        if self.process is None:
            return None
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL the group if it is still there."""
        self.signal(signal.SIGTERM)
        code = self.wait(timeout)
        if code is None:
            self.kill_group()
            code = self.process.returncode if self.process else None
        return code

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events


def http_json(url: str, *, method: str = "GET", body: Any = None, token: str | None = None,
              timeout: float = 10.0) -> tuple[int, Any]:
    """A small synchronous JSON request; returns (status, parsed body or text)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def wait_http_ok(url: str, service: ServiceProcess, timeout: float = 60.0) -> None:
    """Wait until ``url`` answers 200, failing early when the process exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not service.alive():
            code = service.process.returncode if service.process else "?"
            raise LaunchError(f"{service.name} exited with {code}; log: {service.log_path}\n"
                              f"{service.log_text()[-2000:]}")
        try:
            status, body = http_json(url, timeout=2)
            if status == 200:
                return
            last = f"HTTP {status}: {body}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise LaunchError(f"{service.name} not ready at {url} after {timeout:.0f} s ({last}); "
                      f"log: {service.log_path}")
