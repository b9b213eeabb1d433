from __future__ import annotations

import pytest

from consumer.engine.cli import parse_args, spec_from_args
from consumer.engine.spec import parse_spec


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
