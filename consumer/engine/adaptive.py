"""The default search: one policy for deterministic and flaky tests alike.

It runs on the :class:`~consumer.engine.changepoint.ChangePoint` posterior and decides
three things, with no I/O (the engine loop and the simulation both drive it):

- *what to run next*: the commit whose run tells most about the culprit for the rates
  estimated so far (the largest mutual information, times how likely the commit gives a
  usable run at all); with several slots, the commits where P(after) is nearest
  ``i / (slots + 1)``. A deterministic test is halved like ``git bisect``; a flaky one is
  retested where that pays.
- *verification*: as soon as one hypothesis holds half the probability, each side of its
  boundary (the culprit and every parent; for :data:`GOOD_SIDE` the good commits) gets at
  least :data:`SIDE_RUNS` usable runs of this bisection (known verdicts do not count), and
  the answer stands only when the posterior, with those runs, reaches the target. A parent
  that shows the error moves the posterior and the search simply goes on. "The good
  commit is bad" needs :data:`GOOD_SIDE_RUNS` fresh runs there.
- *when to stop*: the best hypothesis verified at the target (``found``, or
  ``good_is_bad``); or, when every run agrees with a deterministic test failing from the
  best hypothesis on, that hypothesis at :data:`CONSISTENT_FLOOR` once its boundary has
  :data:`CONSISTENT_CULPRIT_RUNS` / :data:`CONSISTENT_PARENT_RUNS` runs of this bisection
  (a deterministic test gets there in ``ceil(log2 N) + 7`` runs, the bad commit's check
  included, and reports the posterior, not 100 %); the run budget spent, or the runs so far
  saying the target is out of reach (the two rates too close: "cannot tell"),
  ``undecided``; nothing left that could split the likely candidates (untestable
  commits), ``ambiguous``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass

from consumer.engine.changepoint import (
    GOOD_SIDE,
    ChangePoint,
    Counts,
    Rates,
    RunSplit,
    capacity,
)
from consumer.engine.dag import Dag
from consumer.engine.search import DeterministicSearch, SearchStatus
from consumer.engine.spec import DEFAULT_REPRODUCE_RUNS
from consumer.engine.verdicts import Outcome, Verdict

VERIFY_FROM = 0.5  # verify the best hypothesis once it holds this much probability
SIDE_RUNS = 2  # usable runs of this bisection on each side of the boundary: one retest
CONSISTENT_FLOOR = 0.5  # a verified answer every run agrees with stands from this P on...
# ...when its boundary has this many usable runs of this bisection, all agreeing. The search
# chose the boundary *because* its first runs agreed, so only the retests check it: a flaky
# test that misses the error on the culprit's parent (rate 1 - p) or shows it on a good
# culprit (rate q) survives k retests with probability (1 - p)^k or q^k.
# Three retests each side: a flaky test fools them at most 0.5^6 < 2 % of the time (p = 0.5,
# q = 0), 0.3^3 < 3 % (q = 0.3); one retest each (13 runs for a deterministic test on 1,000
# commits) let 5-12.5 % of flaky bisections end on a wrong culprit, two each 2-4 %
# (bench/engine_retest_tradeoff.py). No search that halves as git does gets far below:
# with 3 runs beyond the halving at most 89-90 % end right where p = 0.5, q = 0, and 5 are
# the least that keep the grid's flaky cells at 95 % (bench/halving_retest_ceiling.py).
CONSISTENT_CULPRIT_RUNS = 4
CONSISTENT_PARENT_RUNS = 4
CONSISTENT_GOOD_RUNS = 2  # a given good commit outside the range (the user said it is good)
GOOD_SIDE_RUNS = 3  # "the good commit is bad" needs this many fresh runs there: a false
# error (rate q) on it twice is not rare enough to overrule the user
STOP_MARGIN = 0.3  # the search stops at P >= 1 - (1 - confidence) * this
# A testable commit skipped this unlikely often in a row is untestable. The culprit is tried
# again and again near the end of a search, so 1 in 200 (4 skips at 25 % noise) gave up on
# it in 1-3 % of the bisections (answer: ambiguous).
GIVE_UP_CHANCE = 0.0005
HOPELESS_AFTER = 60  # usable runs before "cannot tell within the budget" may be said...
HOPELESS_FACTOR = 3.0  # ...when the runs still needed exceed this many budgets...
# ...and the rates that judgement rests on were measured where no hypothesis doubts the
# side: this many usable runs at the bad commit and at each good commit. Runs elsewhere
# belong to p or q only through the posterior, and a search that wandered can misread
# them: on 1,000 commits (p = 0.5, q = 0.1, 25 % noise), 5 of 100 bisections said "cannot
# tell" after 400-700 runs, their q read as 0.4 from a good commit that showed the error
# in 2 of 4 runs. 20 runs tell q from q + 0.2 at the smallest signal.
RATE_CHECK_RUNS = 20
_MIN_INFORMATION = 1e-9  # bits: a run worth less tells nothing

FOUND = "found"
GOOD_IS_BAD = "good_is_bad"
UNDECIDED = "undecided"
AMBIGUOUS = "ambiguous"
SEARCH = "search"
VERIFY = "verify"


@dataclass(frozen=True)
class Pick:
    commit: str
    phase: str  # SEARCH or VERIFY


@dataclass(frozen=True)
class SideRuns:
    commit: str
    role: str  # "culprit", "parent" or "good"
    runs: int  # usable runs of this bisection
    bad_runs: int


@dataclass(frozen=True)
class Decision:
    status: str  # FOUND, GOOD_IS_BAD, UNDECIDED or AMBIGUOUS
    commit: str | None  # the culprit (FOUND), else None
    confidence: float
    candidates: tuple[str, ...]  # most likely first; GOOD_SIDE left out
    reason: str | None
    rates: Rates
    sides: tuple[SideRuns, ...] = ()  # the boundary's runs (FOUND, GOOD_IS_BAD)
    split: RunSplit | None = None  # the runs after and before the culprit (FOUND)


def usable_counts(outcome: Outcome) -> tuple[int, int, int]:
    """``(usable runs, bad runs, skipped runs)`` of one outcome."""
    if outcome.verdict is Verdict.SKIP and not outcome.bad_runs:
        return 0, 0, outcome.runs
    bad = outcome.bad_runs or (outcome.runs if outcome.verdict is Verdict.BAD else 0)
    return max(outcome.runs, bad), bad, 0


class AdaptiveSearch:
    """The default search policy over one range (see the module docstring)."""

    def __init__(self, dag: Dag, bad: str, goods: Sequence[str], *, confidence: float,
                 verify: bool = True, goods_given: bool = True) -> None:
        self.model = ChangePoint(dag, bad, goods)
        self.dag = dag
        self.bad = bad
        self.goods = tuple(goods)
        # False: the good commits were found by stepping back (kept because their runs came
        # out good, not because the user said so): as a culprit's parent, each needs the
        # runs of a parent in the range (CONSISTENT_PARENT_RUNS), not CONSISTENT_GOOD_RUNS.
        self.goods_given = goods_given
        self.target = confidence
        self.verify = verify  # False: no fresh boundary runs are asked for (limits.verify)
        # Stop at a stricter posterior than the one asked for: the prior cannot be right for
        # every test, and an answer reported at c must be right at least c of the time.
        self.stop_at = 1.0 - (1.0 - confidence) * STOP_MARGIN
        self.fresh: dict[str, tuple[int, int]] = {}  # usable and bad runs of this bisection
        self.verify_runs: dict[str, int] = {}  # usable runs the verification asked for
        self.runs = 0  # runs recorded (usable or skipped), fresh ones only
        self.usable = 0
        # While no two runs contradict a deterministic test, the search is git's halving
        # of the candidates left (no more runs than ceil(log2 N) on a deterministic test);
        # the first contradiction hands the choice to the information gain for good.
        self._halving: DeterministicSearch | None = DeterministicSearch(dag, bad)
        self._halving_found: str | None = None  # its answer, cached (it costs O(N))
        self._seen: dict[str, Verdict] = {}
        # The ends of the range to run before "cannot tell" may be said (set by decision)
        self._rate_check: list[str] = []

    # -- evidence ----------------------------------------------------------------------------

    def record(self, commit: str, outcome: Outcome, *, fresh: bool = True,
               phase: str = SEARCH) -> None:
        """A run's outcome; ``fresh`` False for a known verdict of an earlier bisection;
        ``phase`` VERIFY for a run the verification asked for."""
        runs, bad, skips = usable_counts(outcome)
        if fresh and phase == VERIFY and runs:
            self.verify_runs[commit] = self.verify_runs.get(commit, 0) + runs
        if runs == 0 and skips == 0:
            return
        self.model.record(commit, runs, bad, skips)
        self._track_consistency(commit, Verdict.BAD if bad else (
            Verdict.GOOD if runs else Verdict.SKIP))
        if fresh:
            old = self.fresh.get(commit, (0, 0))
            self.fresh[commit] = (old[0] + runs, old[1] + bad)
            if not outcome.reused:
                self.runs += runs + skips
            self.usable += runs

    def _track_consistency(self, commit: str, verdict: Verdict) -> None:
        if self._halving is None:
            return
        before = self._seen.get(commit)
        if verdict is Verdict.SKIP:
            if before is None:
                self._halving.record(commit, Outcome.of(Verdict.SKIP))
            return
        if (before not in (None, Verdict.SKIP) and before is not verdict) or (
                commit in self.goods and verdict is Verdict.BAD):
            self._halving = None  # the same commit both ways, or a bad good commit
            return
        self._seen[commit] = verdict
        self._halving.record(commit, Outcome.of(verdict))
        if self._halving.inconsistent:
            self._halving = None
            return
        found = self._halving.result() if self._halving.candidates_left() <= 2 else None
        self._halving_found = (found.first_bad if found is not None
                               and found.status is SearchStatus.FOUND else None)

    @property
    def consistent(self) -> bool:
        """No run so far contradicts a deterministic test."""
        return self._halving is not None

    def suspect(self) -> tuple[str, float] | None:
        """The hypothesis to verify now, with its probability, or None."""
        best, prob = self.model.best()
        if prob >= VERIFY_FROM:
            return best, prob
        if self._halving is not None and self._halving_found is not None:
            return self._halving_found, self.model.probability(self._halving_found)
        return None

    # -- boundary ----------------------------------------------------------------------------

    def sides(self, hypothesis: str) -> list[tuple[str, str]]:
        """The commits whose runs verify ``hypothesis``, with their role.

        A culprit whose "before" side showed the error also has the good commits as sides
        (role "good": :data:`GOOD_SIDE_RUNS` fresh runs each): then the error shows before
        the culprit at some rate, and "the regression is older than the range" explains
        the same runs with that rate as p, so the good commits must have been run for the
        answer to stand. A search that never ran them named a commit inside the range at
        0.99 while the given good commit showed the error in 80 % of runs
        (bench/engine_step_back.py).
        """
        if hypothesis == GOOD_SIDE:
            return [(g, "good") for g in self.goods]
        parents = self.dag.all_parents(hypothesis)
        sides = [(hypothesis, "culprit")] + [(p, "parent") for p in parents]
        if self.model.split(hypothesis).before_bad:
            sides += [(g, "good") for g in self.goods if g not in parents]
        return sides

    def _side_runs(self, hypothesis: str) -> tuple[SideRuns, ...]:
        return tuple(SideRuns(c, role, *self.fresh.get(c, (0, 0)))
                     for c, role in self.sides(hypothesis))

    def _side_shortfall(self, side: SideRuns, *, strict: bool = False) -> int:
        """Runs this side of the boundary still needs (0: verified).

        A run the verification asked for (a commit the search never ran needs no more), or
        :data:`SIDE_RUNS` usable runs of this bisection (a retest the search made).
        ``strict``: the runs an answer resting on agreement alone needs (see
        :data:`CONSISTENT_CULPRIT_RUNS`); the bad commit as the culprit needs one (no
        commit is newer, so no false error there can mislead), a good commit outside the
        range :data:`CONSISTENT_GOOD_RUNS`. A side the search never ran (its verdict
        followed from another commit's) is checked by the retests alone: one fewer.
        """
        if not self.verify or self._given_up(side.commit):
            return 0
        if side.role == "good":
            return max(0, GOOD_SIDE_RUNS - side.runs)
        asked = self.verify_runs.get(side.commit, 0)
        short = 0 if asked >= 1 or side.runs >= SIDE_RUNS else 1
        if not strict:
            return short
        if side.role == "culprit":
            need = 1 if side.commit == self.bad else CONSISTENT_CULPRIT_RUNS
        elif self.model.in_range(side.commit) or not self.goods_given:
            need = CONSISTENT_PARENT_RUNS
        else:
            need = CONSISTENT_GOOD_RUNS
        if side.runs >= need or asked >= max(need - 1, 1):
            return short
        return max(short, min(need - side.runs, max(need - 1, 1) - asked))

    def _side_done(self, side: SideRuns, *, strict: bool = False) -> bool:
        return self._side_shortfall(side, strict=strict) == 0

    def verified(self, hypothesis: str, *, strict: bool = False) -> bool:
        return all(self._side_done(s, strict=strict) for s in self._side_runs(hypothesis))

    def _rests_on_agreement(self, hypothesis: str, prob: float) -> bool:
        """Whether ``hypothesis`` can only stand as a deterministic test's answer: every run
        agrees with it, and its probability is below the stopping point."""
        return (prob < self.stop_at and prob >= CONSISTENT_FLOOR
                and self.model.consistent_step(hypothesis))

    def _given_up(self, commit: str) -> bool:
        counts = self.model.counts.get(commit)
        return counts is not None and counts.runs == 0 and counts.skips >= self._max_skips()

    def _max_skips(self) -> int:
        """Skips in a row after which a commit is taken as untestable: 2 when runs never
        fail for unrelated reasons, more when they do (the rate seen on testable commits)."""
        usable = skipped = 0
        for counts in self.model.counts.values():
            if counts.runs:
                usable += counts.runs
                skipped += counts.skips
        rate = min(max((skipped + 1) / (usable + skipped + 4), 0.05), 0.8)  # prior: 1 in 4
        return max(2, min(10, math.ceil(math.log(GIVE_UP_CHANCE) / math.log(rate))))

    def _testable(self, commit: str) -> float:
        counts = self.model.counts.get(commit)
        if counts is None:
            return 1.0
        return (counts.runs + 1) / (counts.runs + counts.skips + 1)

    # -- what next ---------------------------------------------------------------------------

    def next_picks(self, n: int, pending: Set[str] | Mapping[str, int] = frozenset()
                   ) -> list[Pick]:
        """Up to ``n`` commits to run now. ``pending``: the commits running (a mapping: how
        many runs of each). A verification side that needs several more runs gets them in
        as many slots at once; the search proposes no commit that is running."""
        if n <= 0:
            return []
        running = pending if isinstance(pending, Mapping) else dict.fromkeys(pending, 1)
        picks = self._verify_picks(running)[:n]
        if len(picks) < n:
            taken = set(running) | {p.commit for p in picks}
            check = [c for c in self._rate_check if c not in taken][:n - len(picks)]
            picks += [Pick(c, SEARCH) for c in check]
            taken |= set(check)
        if len(picks) < n:
            picks += [Pick(c, SEARCH) for c in self._search_picks(n - len(picks), taken)]
        return picks

    def _verify_picks(self, running: Mapping[str, int]) -> list[Pick]:
        """The verification's retests still wanted, taking the boundary's sides in turn
        (the side with the fewest runs asked for first). Failures come in bursts on a CI
        (a bad test machine, a network outage, every run showing the same error for a
        while): back-to-back retests of one side can all fall in one burst and confirm a
        good commit as the culprit, while alternating sides puts the burst on the parent
        too, where it shows as a contradiction (bench/engine_calibration.py --bursts)."""
        suspect = self.suspect()
        if suspect is None:
            return []
        strict = self.model.consistent_step(suspect[0]) and suspect[1] < self.stop_at
        lanes: list[tuple[int, int, str, int]] = []
        for order, side in enumerate(self._side_runs(suspect[0])):
            more = self._side_shortfall(side, strict=strict) - running.get(side.commit, 0)
            if more > 0:
                asked = self.verify_runs.get(side.commit, 0) + running.get(side.commit, 0)
                lanes.append((asked, order, side.commit, more))
        lanes.sort()
        picks: list[Pick] = []
        for turn in range(max((lane[3] for lane in lanes), default=0)):
            picks += [Pick(commit, VERIFY) for _, _, commit, more in lanes if turn < more]
        return picks

    def _search_picks(self, n: int, taken: Set[str]) -> list[str]:
        if self._halving is not None:
            halving = self._halving.next_commits(n, taken)
            if halving:
                return halving
        bits = self.model.information_map()
        choices = {c: b for c, b in bits.items() if c not in taken and not self._given_up(c)}
        if not choices:
            return []
        position = self._position
        scored = {c: self._testable(c) * b for c, b in choices.items()}
        if n == 1:
            best = max(scored, key=lambda c: (scored[c], -position(c)))
            return [best] if scored[best] > _MIN_INFORMATION else []
        # Several slots: k-section on P(after), among the commits worth a run at all.
        worth = [c for c in scored if scored[c] > _MIN_INFORMATION]
        after = {c: self.model.after_probability(c) for c in worth}
        chosen: list[str] = []
        for i in range(1, n + 1):
            left = [c for c in worth if c not in chosen]
            if not left:
                break
            target = i / (n + 1)
            chosen.append(min(left, key=lambda c: (abs(after[c] - target) / self._testable(c),
                                                   position(c))))
        return chosen

    def _position(self, commit: str) -> int:
        return self.dag.position(commit) if commit in self.dag else len(self.dag)

    # -- when to stop ------------------------------------------------------------------------

    def decision(self, *, runs_used: int, budget: int, exhausted: bool = False,
                 time_spent: str | None = None) -> Decision | None:
        """The answer when the search should stop now, else None.

        ``exhausted``: nothing more can be run (no pick left), so an answer is due.
        ``time_spent``: the time budget is spent (the reason says so), likewise.
        """
        best, prob = self.suspect() or self.model.best()
        rates = self.model.rates()
        # A verified boundary that every run agrees with, as a deterministic test would, is
        # all the runs can say without testing a deterministic test over and over: the
        # answer stands, at the probability the posterior gives it (not 100 %).
        if (prob >= self.stop_at and self.verified(best)) or (
                self._rests_on_agreement(best, prob) and self.verified(best, strict=True)):
            if best == GOOD_SIDE:
                return Decision(GOOD_IS_BAD, None, prob, (), self._good_is_bad_reason(rates),
                                rates, self._side_runs(best))
            return Decision(FOUND, best, prob, (best,), None, rates, self._side_runs(best),
                            self.model.split(best))
        if runs_used >= budget:
            return self._undecided(f"run budget of {budget} runs spent", rates, prob)
        if time_spent is not None:
            return self._undecided(time_spent, rates, prob)
        needed = self.runs_needed(rates)
        hopeless = self.usable >= HOPELESS_AFTER and runs_used + needed > HOPELESS_FACTOR * budget
        self._rate_check = self._rates_unchecked() if hopeless else []
        if hopeless and not self._rate_check:
            return self._undecided(
                f"about {needed:.0f} more runs would be needed, over the run budget of {budget}"
                f" ({self._ends_shown()})", rates, prob)
        if exhausted or self._stuck():
            credible = tuple(c for c in self.model.credible_set(self.target) if c != GOOD_SIDE)
            return Decision(
                AMBIGUOUS, None, prob, credible,
                f"no commit left whose runs could tell the likely candidates apart (untestable "
                f"commits?); {len(credible)} candidate(s) hold {self.target:.0%} of the "
                f"probability, the first at {prob:.3f}", rates)
        return None

    def _rates_unchecked(self) -> list[str]:
        """The bad commit and the good commits short of :data:`RATE_CHECK_RUNS` usable runs
        (known verdicts count: their side is as certain), unless they keep skipping."""
        short = []
        for commit in (self.bad, *self.goods):
            counts = self.model.counts.get(commit, Counts())
            if counts.runs < RATE_CHECK_RUNS and counts.skips < 2 * RATE_CHECK_RUNS:
                short.append(commit)
        return short

    def _ends_shown(self) -> str:
        def shown(commit: str) -> str:
            counts = self.model.counts.get(commit, Counts())
            return f"{commit[:12]} in {counts.bad_runs} of {counts.runs}"
        ends = ", ".join(shown(g) for g in self.goods)
        return f"the error showed at the bad commit {shown(self.bad)} runs" + (
            f", at the good commit {ends}" if ends else "")

    def _stuck(self) -> bool:
        """Whether the likely candidates hold the target (with the stopping margin) but no
        commit left to run could tell them apart (untestable commits between them): more
        runs cannot help. Short of the margin, retests around them may still show that one
        of their neighbours is the culprit (a miss on a flaky test)."""
        credible = self.model.credible_set(self.stop_at, limit=20)
        if len(credible) < 2 or len(credible) >= 20:
            return False
        runnable = [c for c in [*self.model.dag.order, *self.goods] if not self._given_up(c)]
        return not self.model.can_split(credible, runnable)

    def runs_needed(self, rates: Rates) -> float:
        """Runs still needed at the information limit for ``rates``, skips included."""
        bits = self.model.entropy_bits() + math.log2(1.0 / max(1.0 - self.target, 1e-9))
        per_run = capacity(rates) * (self.usable + 1) / (self.runs + 1)
        return bits / max(per_run, 1e-9)

    def _undecided(self, why: str, rates: Rates, prob: float) -> Decision:
        credible = tuple(c for c in self.model.credible_set(self.target) if c != GOOD_SIDE)
        best, _ = self.model.best()
        lead = "the good side" if best == GOOD_SIDE else best[:12]
        return Decision(
            UNDECIDED, None, prob, credible,
            f"cannot tell: {why}; the error shows in ~{rates.bad:.0%} of runs after the first "
            f"bad commit and ~{rates.good:.0%} before it, and the most likely answer ({lead}) "
            f"has probability {prob:.3f}, below the target {self.target}", rates)

    def _good_is_bad_reason(self, rates: Rates) -> str:
        shown = "; ".join(f"{s.commit[:12]} showed it in {s.bad_runs} of {s.runs} runs"
                          for s in self._side_runs(GOOD_SIDE))
        return (f"the good commit shows the error ({shown}): the regression is older than the "
                f"range (the error shows in ~{rates.bad:.0%} of runs on both sides)")


def deterministic_run_bound(candidates: int) -> int:
    """The most runs the default search spends on a deterministic test over ``candidates``
    commits with none untestable: the bad commit's check, git's halving, and the boundary's
    retests (:data:`CONSISTENT_CULPRIT_RUNS`, :data:`CONSISTENT_PARENT_RUNS`)."""
    halving = math.ceil(math.log2(max(candidates, 2)))
    return 1 + halving + (CONSISTENT_CULPRIT_RUNS - 1) + (CONSISTENT_PARENT_RUNS - 1)


# -- the bad commit's check -----------------------------------------------------------------

REPRODUCE_USABLE = DEFAULT_REPRODUCE_RUNS  # usable runs without the error (limits.reproduce_runs)
REPRODUCE_TRIES = 30  # ...or this many runs in all (twice the usable ones if more)


def reproduced(usable: int, bad_runs: int, tries: int,
               needed: int = REPRODUCE_USABLE) -> bool | None:
    """The bad commit's check so far: True (the error showed), False (give up after
    ``needed`` usable runs without it), None (run it again). A run without the error is
    evidence of flakiness, not the end: the bad commit *did* fail in the job that reported
    it."""
    if bad_runs:
        return True
    if usable >= needed or tries >= max(REPRODUCE_TRIES, 2 * needed):
        return False
    return None


def hidden_rate_bound(usable: int, confidence: float = 0.95) -> float:
    """The rate below which an error must show if it stayed hidden in ``usable`` runs, at
    ``confidence``: the largest rate r with (1 - r)^usable >= 1 - confidence."""
    if usable <= 0:
        return 1.0
    return 1.0 - (1.0 - confidence) ** (1.0 / usable)
