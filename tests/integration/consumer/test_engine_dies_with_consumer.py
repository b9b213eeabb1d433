"""An engine outlives no SIGKILLed consumer: the parent-death signal reaches it.

A small host process runs :class:`consumer.runner.BisectionRun` the way the worker does,
with an engine that only writes its pid and sleeps; the host is SIGKILLed (nothing of its
own cleanup runs), and the engine must be gone within seconds, not hours.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ENGINE = textwrap.dedent("""
    import os, sys, time
    open(sys.argv[1], "w").write(str(os.getpid()))
    time.sleep(600)
""")

HOST = textwrap.dedent("""
    import asyncio, sys
    from types import SimpleNamespace
    from consumer.runner import BisectionRun

    class Recorder:
        scope = SimpleNamespace(task_id=1, attempt=1)
        result = None
        async def handle(self, event): pass
        async def flush(self): pass

    async def main():
        run = BisectionRun([sys.executable, sys.argv[1], sys.argv[2]], {"task_id": 1},
                           Recorder(), timeout_s=600, kill_grace_s=1,
                           work_dir=sys.argv[3])
        await run.run()

    asyncio.run(main())
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkilled_consumer_takes_its_engine_along(tmp_path: Path) -> None:
    engine = tmp_path / "engine.py"
    engine.write_text(ENGINE)
    pidfile = tmp_path / "engine.pid"
    host = subprocess.Popen(
        [sys.executable, "-c", HOST, str(engine), str(pidfile), str(tmp_path / "w" / "1-1")],
        cwd=Path(__file__).resolve().parents[3])
    try:
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text()):
            assert time.monotonic() < deadline and host.poll() is None, "engine never started"
            time.sleep(0.05)
        engine_pid = int(pidfile.read_text())
        assert _alive(engine_pid)
        os.kill(host.pid, signal.SIGKILL)
        host.wait(10)
        deadline = time.monotonic() + 10
        while _alive(engine_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(engine_pid), "the engine outlived its consumer"
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
        if pidfile.exists() and pidfile.read_text():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


LIFELINE_ENGINE = textwrap.dedent("""
    import signal, sys, time
    from consumer.engine.lifeline import read_spec_line, stop_on_eof
    spec = read_spec_line(sys.stdin.buffer)
    def on_term(*_):
        print("stopped-on-eof", spec.strip(), flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    stop_on_eof(sys.stdin.buffer)
    print("ready", flush=True)
    time.sleep(60)
    print("still-running", flush=True)
""")


def test_engine_stops_when_its_stdin_closes() -> None:
    """The stdin lifeline: the spec line is read, the engine stops at end-of-file."""
    proc = subprocess.Popen([sys.executable, "-c", LIFELINE_ENGINE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[3])
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write('{"task_id": 1}\n')
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "ready"
    started = time.monotonic()
    proc.stdin.close()  # what the kernel does when the consumer dies
    proc.wait(10)
    out = proc.stdout.read()
    proc.stdout.close()
    assert out.strip() == 'stopped-on-eof {"task_id": 1}'
    assert time.monotonic() - started < 5
