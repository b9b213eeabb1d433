"""The range to search: the bad commit confirmed bad, and a good commit found before it.

The bad commit is run until the error shows (bounded: :func:`adaptive.reproduced`,
``limits.reproduce_runs``), never judged by a stored verdict; when a run there did not
show the error the test is flaky, and a candidate good commit is then rerun until its good
verdict is believable.
"""

from __future__ import annotations

import contextlib

from consumer.engine import adaptive, flaky, git
from consumer.engine.evidence import BudgetSpent, Evidence
from consumer.engine.spec import FlakyMode
from consumer.engine.verdicts import Outcome, Verdict

# Git's search (limits.flaky false) takes one run of a commit as its verdict, but a skipped
# run (an unrelated error, a broken checkout) says nothing about our error: the runs it
# cannot do without (the bad commit's check, the boundary's retests) are repeated while
# they skip, this many times at most.
ONE_RUN_TRIES = 3


async def usable_run(ev: Evidence, commit: str, phase: str, *, force: bool,
                     budgeted: bool = True) -> Outcome:
    """A run of ``commit`` for git's search, repeated while it skips (:data:`ONE_RUN_TRIES`)."""
    outcome = await ev.evaluate(commit, phase, force=force, budgeted=budgeted)
    for _ in range(ONE_RUN_TRIES - 1):
        if outcome.verdict is not Verdict.SKIP:
            break
        outcome = await ev.evaluate(commit, phase, force=True, budgeted=budgeted)
    return outcome


async def check_bad(ev: Evidence, bad: str) -> bool:
    """Run the bad commit until the error shows; False when it does not (bounded).

    A stored verdict never decides this: the check always runs (``limits.flaky`` false:
    one usable run, as ``git bisect`` would).
    """
    ev.forget_known(bad)
    if ev.limits.flaky is FlakyMode.OFF:
        return (await usable_run(ev, bad, "check_bad", force=False)).verdict is Verdict.BAD
    tries = 0
    with contextlib.suppress(BudgetSpent):
        while True:
            tally = ev.tally.get(bad, flaky.Tally())
            state = adaptive.reproduced(tally.runs, tally.bad_runs, tries,
                                         ev.limits.reproduce_runs)
            if state is not None:
                return state
            await ev.evaluate(bad, "check_bad", force=tries > 0)
            tries += 1
    return ev.tally.get(bad, flaky.Tally()).bad_runs > 0


def looks_flaky(ev: Evidence, bad: str) -> bool:
    """Whether a run of the bad commit came out good: the error does not always show."""
    tally = ev.tally.get(bad)
    return tally is not None and tally.runs > tally.bad_runs


async def confirmed_good(ev: Evidence, commit: str, bad: str,
                         rate: float | None = None) -> bool:
    """A flaky test's good verdict on a candidate good commit, repeated until it is
    unlikely that the error merely failed to show; any bad run makes it bad.

    ``rate``: the rate the error shows at on a bad commit, when a search has measured it
    (stepping back from a good commit that showed the error): the candidate must then pass
    the runs that rate needs at the search's stopping point, since a candidate is kept only
    because its first run came out good, and a bad one kept turns the next search wrong.
    Else the bad commit's runs say whether the test is flaky and how flaky.
    """
    if ev.limits.flaky is FlakyMode.OFF:
        return True
    if rate is None:
        if not looks_flaky(ev, bad):
            return True
        rate = flaky.Tally().merge(ev.tally.get(bad)).rate_estimate()
        needed = flaky.good_runs_needed(rate, ev.limits.confidence)
    else:
        stop_at = 1.0 - (1.0 - ev.limits.confidence) * adaptive.STOP_MARGIN
        needed = flaky.good_runs_needed(rate, stop_at)
    while (tally := ev.tally.get(commit, flaky.Tally())).bad_runs == 0:
        if tally.runs >= needed or tally.runs + tally.skips >= flaky.CONFIRM_TRIES:
            return tally.runs >= needed
        await ev.evaluate(commit, "find_good", force=True)
    return False


async def find_good(ev: Evidence, bad: str, rate: float | None = None) -> list[str] | None:
    """Step back 1, 2, 4, ... first-parent commits from ``bad`` until one is good
    (:func:`confirmed_good`, with ``rate``).

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
        # A skip says nothing about the error: a candidate that skips is run again (an
        # unrelated error in 25 % of runs passed over the good candidates, the root's
        # too, and ended 4 of 80 bisections good_is_bad with no older good commit tried).
        outcome = await usable_run(ev, commit, "find_good", force=False)
        if outcome.verdict is Verdict.GOOD and await confirmed_good(ev, commit, bad, rate):
            return [commit]
        if offset >= last:
            return [] if root_reached and outcome.verdict is Verdict.BAD else None
        offset *= 2
    return [] if root_reached else None
