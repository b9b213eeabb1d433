from __future__ import annotations

import io

import pytest

from consumer.engine.cli import HumanPrinter, parse_args, spec_from_args
from consumer.engine.spec import DEFAULT_REPRODUCE_RUNS, parse_spec


def test_options_before_and_command_after_the_dashes() -> None:
    args, command = parse_args(
        ["--repo", "https://example.com/r.git", "--bad", "abc", "--error-id", "E1",
         "--timeout", "30", "--different-error", "good", "--", "make", "--jobs", "4"]
    )
    assert command == ["make", "--jobs", "4"]
    spec = parse_spec(spec_from_args(args, command))
    assert spec.error_id == "E1"
    assert spec.tester["command"] == ["make", "--jobs", "4"]
    assert spec.tester["timeout"] == 30.0
    assert spec.limits.different_error.value == "good"
    assert spec.limits.reproduce_runs == DEFAULT_REPRODUCE_RUNS


def test_a_rare_error_can_be_given_more_runs_at_the_bad_commit() -> None:
    args, command = parse_args(["--repo", "r", "--bad", "x", "--reproduce-runs", "45",
                                "--", "t"])
    assert parse_spec(spec_from_args(args, command)).limits.reproduce_runs == 45


@pytest.mark.parametrize(
    "argv",
    [
        ["--repo", "r", "--bad", "x"],  # no test command
        ["--repo", "r", "--bad", "x", "--"],  # empty test command
        ["--bad", "x", "--", "t"],  # no repo
        ["--repo", "r", "--bad", "x", "--timeout", "soon", "--", "t"],
    ],
)
def test_bad_input_exits_2_with_a_message(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        parse_args(argv)
    assert caught.value.code == 2
    assert "bisect-run" in capsys.readouterr().err


def test_a_boundary_that_ran_against_the_answer_is_not_called_failed() -> None:
    """A flaky test's parent may show the error now and then: the summary says the
    verification is not clean and why, beside the confidence that weighs those runs."""
    stream = io.StringIO()
    detail = ("culprit 6f7103332226 showed the error in 9 of 14 fresh runs; parent "
              "896a58673310 showed the error in 2 of 19 fresh runs")
    HumanPrinter(stream)({
        "event": "result", "status": "found", "first_bad_commit": "6f7103332226" + "0" * 28,
        "subject": "c37", "author": "t <a@b>", "date": "2026-11-30T22:09:28+00:00",
        "confidence": 0.986, "verification": {"held": False, "detail": detail, "runs": 33},
        "rates": {"bad": 0.6, "good": 0.12, "after_runs": 40, "after_bad": 24,
                  "before_runs": 60, "before_bad": 7},
        "runs": 114})
    out = stream.getvalue()
    assert f"verification not clean: {detail}" in out
    assert "FAILED" not in out and "confidence: 0.986" in out
    # The estimates, and the runs they rest on.
    assert ("the error shows in ~60% of runs from it on, ~12% before it (it showed in 24 of "
            "40 runs from it on, 7 of 60 before it)") in out
