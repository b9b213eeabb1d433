from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import ValidationError
from consumer.engine import testers
from consumer.engine.cli import parse_args, read_known_verdicts, spec_from_args
from consumer.engine.spec import (
    DEFAULT_DETERMINISTIC_RUN_BUDGET,
    DEFAULT_RUN_BUDGET,
    FlakyMode,
    parse_spec,
)
from consumer.engine.testers import TesterContext, build_tester

BASE = {"repo_url": "r", "bad_commit": "b", "tester": {"kind": "command", "command": ["t"]}}


def test_flaky_modes_and_budgets() -> None:
    assert parse_spec(BASE).limits.flaky is FlakyMode.AUTO
    spec = parse_spec({**BASE, "limits": {"flaky": True}})
    assert spec.limits.flaky is FlakyMode.ON
    assert spec.limits.run_budget == DEFAULT_RUN_BUDGET
    spec = parse_spec({**BASE, "limits": {"flaky": False}})
    assert spec.limits.run_budget == DEFAULT_DETERMINISTIC_RUN_BUDGET
    spec = parse_spec({**BASE, "limits": {"flaky": False, "run_budget": 80}})
    assert spec.limits.flaky is FlakyMode.OFF and spec.limits.run_budget == 80
    with pytest.raises(ValidationError) as caught:
        parse_spec({**BASE, "limits": {"flaky": "sometimes"}})
    assert caught.value.field == "limits.flaky"


def test_head_check_revision_or_head_commit() -> None:
    assert parse_spec(BASE).head_revision is None
    assert parse_spec({**BASE, "limits": {"head_check": "main"}}).head_revision == "main"
    spec = parse_spec({**BASE, "head_commit": "h" * 40, "limits": {"head_check": True}})
    assert spec.head_revision == "h" * 40
    with pytest.raises(ValidationError) as caught:
        parse_spec({**BASE, "limits": {"head_check": True}})
    assert caught.value.field == "head_commit"


def test_fresh_runs_drops_known_verdicts_and_must_be_a_bool() -> None:
    known = [{"commit": "a" * 40, "verdict": "good", "runs": 1}]
    assert parse_spec({**BASE, "known_verdicts": known}).fresh_runs is False
    assert parse_spec({**BASE, "known_verdicts": known, "fresh_runs": True}).fresh_runs
    with pytest.raises(ValidationError) as caught:
        parse_spec({**BASE, "fresh_runs": "yes"})
    assert caught.value.field == "fresh_runs"


def test_db_and_scheduler_urls_reach_the_spec() -> None:
    spec = parse_spec({**BASE, "db_url": "mysql://u@h:3306/d", "scheduler_url": "http://s:3000"})
    assert (spec.db_url, spec.scheduler_url) == ("mysql://u@h:3306/d", "http://s:3000")


def test_compass_is_registered_and_needs_its_urls() -> None:
    assert "compass" in testers.tester_kinds()
    with pytest.raises(ValidationError) as caught:
        build_tester({"kind": "compass"}, TesterContext(error_id="E", bad_job_id="1"))
    assert caught.value.field == "scheduler_url"
    with pytest.raises(ValidationError) as caught:
        build_tester({"kind": "compass"}, TesterContext(
            error_id="E", bad_job_id="1", scheduler_url="http://s"))
    assert caught.value.field == "db_url"


def test_secrets_are_not_fingerprinted() -> None:
    plain = {"kind": "compass", "name": "c"}
    with_token = {**plain, "my_token": "t"}
    assert testers.tester_fingerprint(plain) == testers.tester_fingerprint(with_token)


def test_cli_flaky_options(tmp_path: Path) -> None:
    args, command = parse_args(["--repo", "r", "--bad", "b", "--flaky", "--max-runs", "200",
                                "--confidence", "0.99", "--slots", "4", "--head-check", "h",
                                "--", "t"])
    spec = parse_spec(spec_from_args(args, command))
    assert spec.limits.flaky is FlakyMode.ON and spec.limits.run_budget == 200
    assert spec.limits.confidence == 0.99 and spec.limits.slots == 4
    assert spec.head_revision == "h"
    args, command = parse_args(["--repo", "r", "--bad", "b", "--", "t"])
    limits = parse_spec(spec_from_args(args, command)).limits
    assert limits.flaky is FlakyMode.AUTO and limits.run_budget == DEFAULT_RUN_BUDGET


def test_known_verdicts_file_lines_or_list(tmp_path: Path) -> None:
    events = [
        {"event": "verdict", "commit": "a" * 40, "tester_fingerprint": "f", "error_id": "E",
         "verdict": "good", "runs": 1, "bad_runs": 0, "job_id": None},
        {"event": "verdict", "commit": "a" * 40, "tester_fingerprint": "f", "error_id": "E",
         "verdict": "good", "runs": 3, "bad_runs": 0, "job_id": None},
        {"event": "verdict", "commit": "b" * 40, "tester_fingerprint": "other",
         "error_id": "E", "verdict": "bad", "runs": 1, "bad_runs": 1},
        {"event": "verdict", "commit": "c" * 40, "tester_fingerprint": "f",
         "error_id": "E2", "verdict": "bad", "runs": 1, "bad_runs": 1},
        {"event": "step", "commit": "d" * 40, "verdict": "bad"},
        {"commit": "e" * 40, "verdict": "bad"},
    ]
    lines = tmp_path / "v.jsonl"
    lines.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    listed = tmp_path / "v.json"
    listed.write_text(json.dumps(events))
    for path in (lines, listed):
        known = read_known_verdicts(path, "f", "E")
        assert known == [{"commit": "a" * 40, "verdict": "good", "runs": 3, "bad_runs": 0},
                         {"commit": "e" * 40, "verdict": "bad"}]
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ValidationError):
        read_known_verdicts(bad, "f", "E")
