from __future__ import annotations

import pytest

from consumer.engine.verdicts import DifferentErrorPolicy, Verdict, classify

SKIP, GOOD = DifferentErrorPolicy.SKIP, DifferentErrorPolicy.GOOD


@pytest.mark.parametrize(
    ("exit_code", "timed_out", "seen", "policy", "expected"),
    [
        (1, False, {"E1"}, SKIP, Verdict.BAD),  # our error
        (0, False, {"E1"}, SKIP, Verdict.BAD),  # shown even though the test passed
        (None, True, {"E1"}, SKIP, Verdict.BAD),  # shown before the timeout
        (125, False, {"E1"}, SKIP, Verdict.SKIP),  # the test says it cannot judge
        (0, False, set(), SKIP, Verdict.GOOD),
        (0, False, {"E2"}, SKIP, Verdict.GOOD),  # exit 0 without ours is good
        (1, False, {"E2"}, SKIP, Verdict.SKIP),  # different error masks ours: skip
        (1, False, {"E2"}, GOOD, Verdict.GOOD),  # ... unless told it counts as good
        (1, False, set(), SKIP, Verdict.SKIP),  # failed without any id: different error
        (2, False, set(), GOOD, Verdict.GOOD),
        (None, True, set(), SKIP, Verdict.SKIP),  # timeout
        (-9, False, set(), SKIP, Verdict.SKIP),  # killed by a signal
        (139, False, set(), SKIP, Verdict.SKIP),  # crashed
    ],
)
def test_rules_with_an_error_id(
    exit_code: int | None,
    timed_out: bool,
    seen: set[str],
    policy: DifferentErrorPolicy,
    expected: Verdict,
) -> None:
    verdict, reason = classify(
        exit_code=exit_code, timed_out=timed_out, error_id="E1", errids_seen=seen,
        different_error=policy,
    )
    assert verdict is expected
    assert reason


@pytest.mark.parametrize(
    ("exit_code", "timed_out", "expected"),
    [
        (0, False, Verdict.GOOD),
        (1, False, Verdict.BAD),
        (127, False, Verdict.BAD),
        (125, False, Verdict.SKIP),
        (128, False, Verdict.SKIP),
        (-15, False, Verdict.SKIP),
        (None, True, Verdict.SKIP),
    ],
)
def test_exit_codes_decide_without_an_error_id(
    exit_code: int | None, timed_out: bool, expected: Verdict
) -> None:
    verdict, _ = classify(exit_code=exit_code, timed_out=timed_out, error_id=None,
                          errids_seen={"E9"})
    assert verdict is expected


def test_different_error_reason_says_what_it_counts_as() -> None:
    _, reason = classify(exit_code=1, timed_out=False, error_id="E1", errids_seen={"E2"},
                         different_error=SKIP)
    assert "different error" in reason and "E2" in reason and "skip" in reason
