"""The range to search: the bad commit confirmed bad, and a good commit found before it.

A flaky test gets more runs on both ends: the bad commit until the error shows (or enough
usable runs say it does not), a candidate good commit until a good verdict is believable.
"""

from __future__ import annotations

import contextlib

from consumer.engine import flaky, git
from consumer.engine.evidence import BudgetSpent, Evidence
from consumer.engine.spec import FlakyMode
from consumer.engine.verdicts import Verdict


async def check_bad(ev: Evidence, bad: str) -> bool:
    """Test the bad commit; a flaky test gets up to a few more runs to show the error."""
    outcome = await ev.evaluate(bad, "check_bad")
    if outcome.verdict is Verdict.BAD:
        return True
    if ev.limits.flaky is not FlakyMode.ON or bad in ev.known:
        return False
    with contextlib.suppress(BudgetSpent):
        for _ in range(flaky.REPRODUCE_TRIES - 1):
            if ev.tally[bad].runs >= flaky.REPRODUCE_USABLE:
                break
            if (await ev.evaluate(bad, "check_bad", force=True)).verdict is Verdict.BAD:
                return True
    return False


async def confirmed_good(ev: Evidence, commit: str, bad: str) -> bool:
    """A flaky test's good verdict on a candidate good commit, repeated until it is
    unlikely that the error merely failed to show; any bad run makes it bad."""
    if ev.limits.flaky is not FlakyMode.ON:
        return True
    rate = flaky.Tally().merge(ev.tally.get(bad)).rate_estimate()
    needed = flaky.good_runs_needed(rate, ev.limits.confidence)
    while (tally := ev.tally.get(commit, flaky.Tally())).bad_runs == 0:
        if tally.runs >= needed or tally.runs + tally.skips >= flaky.CONFIRM_TRIES:
            return tally.runs >= needed
        await ev.evaluate(commit, "find_good", force=True)
    return False


async def find_good(ev: Evidence, bad: str) -> list[str] | None:
    """Step back 1, 2, 4, ... first-parent commits from ``bad`` until one is good.

    A bad root commit ends the walk with no good commit at all (``[]``): then the root
    itself is the first bad commit. None: no good commit within ``limits.max_good_search``.
    Raises :class:`BudgetSpent` when the run budget ends the walk.
    """
    chain = await git.first_parent_chain(ev.mirror, bad, ev.limits.max_good_search)
    last = len(chain) - 1
    root_reached = last < ev.limits.max_good_search or not await git.parents_of(
        ev.mirror, chain[last]
    )
    offset = 1
    while last >= 1:
        commit = chain[min(offset, last)]
        outcome = await ev.evaluate(commit, "find_good")
        if outcome.verdict is Verdict.GOOD and await confirmed_good(ev, commit, bad):
            return [commit]
        if offset >= last:
            return [] if root_reached and outcome.verdict is Verdict.BAD else None
        offset *= 2
    return [] if root_reached else None
