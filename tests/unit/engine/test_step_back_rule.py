"""When the default search steps back from its good commit (runner.regression_may_be_older)."""

from __future__ import annotations

from consumer.engine.adaptive import AMBIGUOUS, FOUND, GOOD_IS_BAD, Decision, SideRuns
from consumer.engine.changepoint import Rates
from consumer.engine.runner import regression_may_be_older

GOOD = "g0"
RATES = Rates(0.8, 0.3)


def _found(*sides: SideRuns) -> Decision:
    return Decision(FOUND, "c5", 0.99, ("c5",), None, RATES, sides)


def test_good_is_bad_steps_back() -> None:
    decision = Decision(GOOD_IS_BAD, None, 0.99, (), "shows", RATES,
                        (SideRuns(GOOD, "good", 3, 3),))
    assert regression_may_be_older(decision, [GOOD])
    assert not regression_may_be_older(decision, [])  # nothing to step back from


def test_a_culprit_next_to_a_good_commit_that_showed_the_error_steps_back() -> None:
    # The good commit alone says the error shows before the culprit (2 of 5 runs): a
    # regression older than the range explains that as well, and only older commits can
    # tell the two apart.
    assert regression_may_be_older(
        _found(SideRuns("c5", "culprit", 8, 8), SideRuns(GOOD, "parent", 5, 2)), [GOOD])


def test_a_culprit_next_to_a_clean_good_commit_stands() -> None:
    assert not regression_may_be_older(
        _found(SideRuns("c5", "culprit", 4, 4), SideRuns(GOOD, "parent", 4, 0)), [GOOD])


def test_a_culprit_inside_the_range_stands_even_when_the_good_commit_showed_the_error() -> None:
    # Its parent is a commit of the range: the "before" side has commits of its own.
    assert not regression_may_be_older(
        _found(SideRuns("c5", "culprit", 4, 4), SideRuns("c4", "parent", 4, 1),
               SideRuns(GOOD, "good", 3, 1)), [GOOD])


def test_other_answers_do_not_step_back() -> None:
    decision = Decision(AMBIGUOUS, None, 0.6, ("c4", "c5"), "untestable", RATES)
    assert not regression_may_be_older(decision, [GOOD])
