"""``python -m consumer.engine --spec -`` as the consumer runs it: a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

from consumer.engine.events import parse_event_line
from consumer.engine.synthetic import make_repo
from tests.integration.engine.helpers import engine_process, spec_data


def _run(spec_text: str) -> tuple[int, list[dict[str, object]], str]:
    proc = engine_process(["consumer.engine", "--spec", "-"], stdin=-1)
    out, err = proc.communicate(spec_text, timeout=60)
    events = [parse_event_line(line) for line in out.splitlines()]  # every line is JSON
    return proc.returncode, events, err


def test_found_exits_0_with_result_last(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 40, 25)
    code, events, err = _run(json.dumps(spec_data(repo, tmp_path, task_id=5)))
    assert code == 0, err
    assert events[0]["event"] == "started" and events[-1]["event"] == "result"
    assert [e["event"] for e in events].count("result") == 1
    result = events[-1]
    assert result["status"] == "found" and result["first_bad_commit"] == repo.culprit
    assert result["verification"]["held"] is True  # type: ignore[index]
    # stderr carries the logs only, as JSON lines here
    assert all(json.loads(line)["service"] == "engine" for line in err.splitlines())


def test_spec_from_a_file(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 10, 4)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec_data(repo, tmp_path)))
    proc = engine_process(["consumer.engine", "--spec", str(path)])
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert parse_event_line(out.splitlines()[-1])["first_bad_commit"] == repo.culprit


def test_no_result_exits_1(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 20, 10)
    code, events, _ = _run(json.dumps(spec_data(repo, tmp_path, bad_commit=repo.shas[5])))
    assert code == 1
    assert events[-1]["status"] == "not_reproduced"


def test_bad_spec_json_exits_2_with_a_message(tmp_path: Path) -> None:
    code, events, err = _run("{this is not json")
    assert code == 2
    assert "not valid JSON" in err
    assert events[-1]["event"] == "result" and events[-1]["status"] == "error"


def test_invalid_field_exits_2(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 5, 2)
    code, events, err = _run(json.dumps(spec_data(repo, tmp_path, limits={"slots": 0})))
    assert code == 2 and "limits.slots" in err
    assert events[-1]["status"] == "error"


def test_git_failure_exits_2(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 5, 2)
    code, events, _ = _run(json.dumps(spec_data(repo, tmp_path, bad_commit="no-such-rev")))
    assert code == 2
    assert events[-1]["status"] == "error" and "no-such-rev" in str(events[-1]["reason"])
