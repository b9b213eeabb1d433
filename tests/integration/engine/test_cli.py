"""``bisect-run``: the human command line."""

from __future__ import annotations

import json
from pathlib import Path

from consumer.engine.cli import build_parser
from consumer.engine.synthetic import make_repo
from tests.integration.engine.helpers import engine_process


def _cli(args: list[str]) -> tuple[int, str, str]:
    proc = engine_process(["consumer.engine.cli", *args])
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def test_readable_summary(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 100, 77)
    code, out, _ = _cli(["--repo", str(repo.path), "--bad", "HEAD", "--error-id", "E_SYNTH",
                         "--cache-dir", str(tmp_path / "c"), "--", "./check.sh"])
    assert code == 0
    assert f"first bad commit: {repo.culprit}" in out
    assert "synthetic commit 77 (bad)" in out and "verification held" in out
    assert "confidence: " in out
    # A line as each test starts, before the line saying how it ended.
    lines = out.splitlines()
    first_start = next(i for i, line in enumerate(lines) if "testing..." in line)
    first_end = next(i for i, line in enumerate(lines) if line.startswith("[  1]"))
    assert first_start < first_end


def test_help_needs_no_test_command() -> None:
    for flag in ("--help", "-h"):
        code, out, _ = _cli([flag])
        assert code == 0 and "usage: bisect-run" in out and "--fresh-runs" in out
    # Every option says what it does.
    parser = build_parser()
    assert all(action.help for action in parser._actions)


def test_json_events_with_result_last(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 100, 77)
    code, out, _ = _cli(["--repo", str(repo.path), "--bad", "main", "--good", "main~99",
                         "--error-id", "E_SYNTH", "--json", "--cache-dir", str(tmp_path / "c"),
                         "--", "sh", "-c", "./check.sh"])
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert events[-1]["event"] == "result"
    assert events[-1]["first_bad_commit"] == repo.culprit


def test_exit_codes_without_error_id_and_candidates_on_skips(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 60, 30, skip_range=range(28, 30))
    code, out, _ = _cli(["--repo", str(repo.path), "--bad", "HEAD", "--json",
                         "--cache-dir", str(tmp_path / "c"), "--", "./check.sh"])
    assert code == 1
    result = json.loads(out.splitlines()[-1])
    assert result["status"] == "ambiguous"
    assert set(result["candidates"]) == {repo.shas[i] for i in (28, 29, 30)}


def test_bad_input_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 5, 2)
    code, _, err = _cli(["--repo", str(repo.path), "--bad", "HEAD"])
    assert code == 2 and "TEST COMMAND" in err
    code, _, err = _cli(["--repo", str(repo.path), "--bad", "nope", "--", "./check.sh"])
    assert code == 2 and "nope" in err
