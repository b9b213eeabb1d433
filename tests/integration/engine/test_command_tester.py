from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from consumer.engine import testers
from consumer.engine.command_tester import CommandTester
from consumer.engine.verdicts import DifferentErrorPolicy, Verdict


def _tester(
    command: list[str] | str, error_id: str | None = "E1", **profile: object
) -> CommandTester:
    context = testers.TesterContext(error_id=error_id)
    return CommandTester.from_profile({"command": command, "kill_grace": 0.5, **profile}, context)


async def test_error_id_in_output_is_bad(tmp_path: Path) -> None:
    outcome = await _tester(["sh", "-c", "echo 'ERRID: E1' >&2; exit 1"]).test("c1", tmp_path)
    assert outcome.verdict is Verdict.BAD and outcome.bad_runs == 1
    assert outcome.errids_seen == {"E1"}


async def test_exit_0_is_good_and_env_and_workdir_apply(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    script = 'test "$(basename "$PWD")" = sub && test "$BISECT_COMMIT" = c9 && test "$X" = 1'
    tester = _tester(script, workdir="sub", env={"X": "1"})
    outcome = await tester.test("c9", tmp_path)
    assert outcome.verdict is Verdict.GOOD, outcome.detail


async def test_other_error_follows_the_policy(tmp_path: Path) -> None:
    command = ["sh", "-c", "echo 'ERRID: E2'; exit 1"]
    assert (await _tester(command).test("c", tmp_path)).verdict is Verdict.SKIP
    context = testers.TesterContext(error_id="E1", different_error=DifferentErrorPolicy.GOOD)
    tester = CommandTester.from_profile({"command": command}, context)
    outcome = await tester.test("c", tmp_path)
    assert outcome.verdict is Verdict.GOOD and "different error" in outcome.detail


async def test_missing_script_is_a_skip(tmp_path: Path) -> None:
    outcome = await _tester(["./not-here.sh"]).test("c", tmp_path)
    assert outcome.verdict is Verdict.SKIP and "cannot run" in outcome.detail


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    command = f"sleep 30 & echo $! > {pidfile}; wait"
    started = time.monotonic()
    outcome = await _tester(command, timeout=0.5).test("c", tmp_path)
    assert outcome.verdict is Verdict.SKIP and "timed out" in outcome.detail
    assert time.monotonic() - started < 5
    child = int(pidfile.read_text())
    for _ in range(50):  # the orphan is reaped by init a moment later
        if not _alive(child):
            break
        await asyncio.sleep(0.02)
    assert not _alive(child), "the test's child outlived the timeout"


async def test_term_ignoring_test_gets_sigkill(tmp_path: Path) -> None:
    outcome = await _tester("trap '' TERM; sleep 30", timeout=0.3).test("c", tmp_path)
    assert outcome.verdict is Verdict.SKIP


async def test_flooding_output_is_capped(tmp_path: Path) -> None:
    command = "echo 'ERRID: E1'; head -c 5000000 /dev/zero | tr '\\0' 'x'; exit 1"
    outcome = await _tester(command).test("c", tmp_path)
    assert outcome.verdict is Verdict.BAD
    assert len(outcome.detail) < 2000


async def test_exit_codes_without_error_id(tmp_path: Path) -> None:
    results = {}
    for code in (0, 1, 125, 129):
        outcome = await _tester(["sh", "-c", f"exit {code}"], error_id=None).test("c", tmp_path)
        results[code] = outcome.verdict
    assert results == {0: Verdict.GOOD, 1: Verdict.BAD, 125: Verdict.SKIP, 129: Verdict.SKIP}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its reaper counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
