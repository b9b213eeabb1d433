from __future__ import annotations

import json

import pytest

from common.errors import ValidationError
from consumer.engine.evidence import duration_text
from consumer.engine.spec import DEFAULT_REPRODUCE_RUNS, DEFAULT_RUN_BUDGET, load_spec, parse_spec
from consumer.engine.verdicts import DifferentErrorPolicy, Verdict

BASE = {
    "repo_url": "/srv/repo",
    "bad_commit": "abc",
    "tester": {"kind": "command", "command": ["./t.sh"]},
}


def test_minimal_spec_gets_defaults() -> None:
    spec = parse_spec(BASE)
    assert spec.good_commit is None and spec.error_id is None
    assert spec.limits.slots == 1 and spec.limits.run_budget == DEFAULT_RUN_BUDGET
    assert spec.limits.different_error is DifferentErrorPolicy.SKIP
    assert spec.limits.verify


def test_full_spec() -> None:
    spec = parse_spec({
        **BASE,
        "task_id": 7,
        "good_commit": "def",
        "error_id": "E1",
        "limits": {"slots": 3, "different_error": "good", "verify": "retest"},
        "known_verdicts": [{"commit": "ABC", "verdict": "bad", "runs": 2, "job_id": 9}],
        "cache_dir": "/c",
        "work_dir": "/w",
        "bad_job_id": 123,
    })
    assert spec.bad_job_id == "123"
    assert spec.task_id == 7 and spec.limits.slots == 3 and spec.limits.verify
    assert spec.limits.different_error is DifferentErrorPolicy.GOOD
    (known,) = spec.known_verdicts
    assert (known.commit, known.verdict, known.runs, known.bad_runs, known.job_id) == (
        "abc", Verdict.BAD, 2, 2, "9")
    assert str(spec.resolved_work_dir) == "/w"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"repo_url": ""}, "repo_url"),
        ({"bad_commit": None}, "bad_commit"),
        ({"tester": {"command": "x"}}, "tester"),
        ({"limits": {"slots": 0}}, "limits.slots"),
        ({"limits": {"run_budget": "many"}}, "limits.run_budget"),
        ({"limits": {"time_budget_s": 0}}, "limits.time_budget_s"),
        ({"limits": {"time_budget_s": "soon"}}, "limits.time_budget_s"),
        ({"limits": {"time_budget_s": True}}, "limits.time_budget_s"),
        ({"limits": {"reproduce_runs": 0}}, "limits.reproduce_runs"),
        ({"limits": {"reproduce_runs": 10**6}}, "limits.reproduce_runs"),
        ({"limits": {"reproduce_runs": "more"}}, "limits.reproduce_runs"),
        ({"limits": {"different_error": "bad"}}, "limits.different_error"),
        ({"limits": {"verify": "maybe"}}, "limits.verify"),
        ({"limits": {"confidence": 2}}, "limits.confidence"),
        ({"known_verdicts": [{"commit": "a", "verdict": "meh"}]}, "known_verdicts[0].verdict"),
        ({"task_id": "seven"}, "task_id"),
    ],
)
def test_invalid_fields_are_named(change: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_spec({**BASE, **change})
    assert caught.value.field == field


def test_the_time_budget_is_optional_seconds() -> None:
    assert parse_spec(BASE).limits.time_budget_s is None
    spec = parse_spec({**BASE, "limits": {"time_budget_s": 90}})
    assert spec.limits.time_budget_s == 90.0


def test_the_bad_commits_check_has_a_default_a_task_can_raise() -> None:
    assert parse_spec(BASE).limits.reproduce_runs == DEFAULT_REPRODUCE_RUNS == 15
    assert parse_spec({**BASE, "limits": {"reproduce_runs": 60}}).limits.reproduce_runs == 60


def test_not_json() -> None:
    with pytest.raises(ValidationError, match="not valid JSON"):
        load_spec("{nope")
    assert load_spec(json.dumps(BASE)).bad_commit == "abc"


@pytest.mark.parametrize(("seconds", "text"), [
    (1.5, "1.5 s"), (90, "90 s"), (120, "2 min"), (3600, "1 h"), (5400, "1 h 30 min"),
    (4 * 3600 * 0.95, "3 h 48 min"),
])
def test_a_time_budget_reads_as_a_person_writes_it(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text
