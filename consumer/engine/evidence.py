"""The evidence of one bisection: every test it runs, and what each one showed.

Every test goes through :meth:`Evidence.evaluate`, which reuses what is already known (a
commit is never tested twice), keeps the run budget, and emits ``step`` and ``verdict``
events. The range finder, the search loop and the conclusion all read the same record.
"""

from __future__ import annotations

import time
from pathlib import Path

import structlog

from consumer.engine import flaky
from consumer.engine.events import STEP, TESTING, VERDICT, Emit, make_event
from consumer.engine.result import TestedCommit
from consumer.engine.spec import TaskSpec
from consumer.engine.testers import Tester, tester_fingerprint
from consumer.engine.verdicts import Outcome
from consumer.engine.worktree import WorktreePool

log = structlog.get_logger(__name__)


class BudgetSpent(Exception):
    """The run budget (or the time budget) does not allow another test."""


def duration_text(seconds: float) -> str:
    """``4 h``, ``1 h 30 min``, ``90 s``: a time budget as a person writes it."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    if not hours:
        return f"{minutes} min"
    return f"{hours} h" + (f" {minutes} min" if minutes else "")


class Evidence:
    """The tests of one bisection over a prepared mirror and worktree pool."""

    def __init__(
        self, spec: TaskSpec, emit: Emit, *, mirror: Path, tester: Tester, pool: WorktreePool
    ) -> None:
        self.spec = spec
        self.limits = spec.limits
        self.emit = emit
        self.mirror = mirror
        self.tester = tester
        self.pool = pool
        self.fingerprint = tester_fingerprint(spec.tester)
        self.log = log.bind(task_id=spec.task_id)
        # Known verdicts of earlier bisections, unless fresh runs are asked for. A record
        # without a single run (a skip stored after a timeout) says nothing and is dropped:
        # reusing it would end every later bisection at once.
        self.known = {
            k.commit: Outcome(
                verdict=k.verdict, runs=k.runs, bad_runs=k.bad_runs, job_id=k.job_id,
                detail="known verdict",
            )
            for k in ([] if spec.fresh_runs else spec.known_verdicts)
            if k.runs > 0 or k.bad_runs > 0
        }
        self.outcomes: dict[str, Outcome] = {}  # the first outcome of each commit
        self.history: list[tuple[str, Outcome]] = []  # every outcome, known ones included
        self.tally: dict[str, flaky.Tally] = {}  # runs per commit, for verdict events
        self.budget = self.limits.run_budget
        self.strategy = "adaptive"  # the search strategy's name, for the result
        self.reused: set[str] = set()
        self.tested: list[TestedCommit] = []
        self.runs = 0
        self.in_flight = 0
        self._seq = 0
        self._started = time.monotonic()
        self._tests = 0  # tests run to the end, and their wall time: what the next one takes
        self._test_seconds = 0.0

    def out_of_time(self) -> bool:
        """Whether a test started now would likely end after the time budget (a test takes
        the mean wall time of those so far)."""
        limit = self.limits.time_budget_s
        if limit is None:
            return False
        expected = self._test_seconds / self._tests if self._tests else 0.0
        return time.monotonic() - self._started + expected > limit

    def room(self) -> int:
        """Runs that may still start: the run budget left, none once time is up."""
        if self.out_of_time():
            return 0
        return self.budget - self.runs - self.in_flight

    def spent(self) -> str:
        """Which budget stopped the bisection, for its reason."""
        limit = self.limits.time_budget_s
        if limit is not None and self.out_of_time():
            return f"time budget of {duration_text(limit)} spent ({self.runs} runs)"
        return f"run budget of {self.budget} runs spent"

    def forget_known(self, commit: str) -> None:
        """Never reuse a verdict on ``commit`` (the bad commit: its check must be run)."""
        self.known.pop(commit, None)

    async def evaluate(
        self, commit: str, phase: str, *, force: bool = False, budgeted: bool = True
    ) -> Outcome:
        """The verdict on ``commit``: known or already tested, else tested now.

        ``force``: test again even when a verdict is at hand. ``budgeted``: raise
        :class:`BudgetSpent` rather than go over the run budget.
        """
        if not force:
            if commit in self.outcomes:
                return self.outcomes[commit]
            if commit in self.known:
                outcome = self.known[commit]
                self.outcomes[commit] = outcome
                self.history.append((commit, outcome))
                self.tally[commit] = flaky.Tally().add(outcome)
                self.reused.add(commit)
                self._note(commit, outcome, phase, reused=True, known=True)
                return outcome
        if commit in self.known and commit not in self.tally:
            # A retest of a known commit: the stored verdict grows by this run.
            self.tally[commit] = flaky.Tally().add(self.known[commit])
        if budgeted and self.room() <= 0:
            raise BudgetSpent
        self.in_flight += 1
        self.emit(make_event(TESTING, phase=phase, commit=commit))
        started = time.monotonic()
        try:
            if not getattr(self.tester, "needs_worktree", True):  # a remote tester
                outcome = await self.tester.test(commit, self.pool.work_dir)
            else:
                worktree = await self.pool.acquire()
                try:
                    await self.pool.checkout(worktree, commit)
                    outcome = await self.tester.test(commit, worktree.path)
                finally:
                    self.pool.release(worktree)
        finally:
            self.in_flight -= 1
        self._tests += 1
        self._test_seconds += time.monotonic() - started
        if not outcome.reused:
            self.runs += outcome.runs
        self.outcomes.setdefault(commit, outcome)
        self.history.append((commit, outcome))
        self.tally[commit] = self.tally.get(commit, flaky.Tally()).add(outcome)
        self._note(commit, outcome, phase, reused=outcome.reused)
        return outcome

    def _note(
        self, commit: str, outcome: Outcome, phase: str, *, reused: bool, known: bool = False
    ) -> None:
        self._seq += 1
        self.tested.append(TestedCommit(commit, outcome.verdict.value, phase, reused))
        self.log.info("step_finished", commit=commit, verdict=outcome.verdict.value, phase=phase,
                      reused=reused, detail=outcome.detail[:200])
        self.emit(make_event(
            STEP, seq=self._seq, phase=phase, commit=commit, verdict=outcome.verdict.value,
            runs=outcome.runs, bad_runs=outcome.bad_runs, duration_s=outcome.duration_s,
            job_id=outcome.job_id, result_root=outcome.result_root, detail=outcome.detail,
            reused=reused,
        ))
        if not known:
            # Cumulative over every run of the commit (known runs included): the consumer
            # replaces the stored verdict with it, so a retested commit keeps all its runs.
            tally = self.tally[commit]
            self.emit(make_event(
                VERDICT, commit=commit, tester_fingerprint=self.fingerprint,
                error_id=self.spec.error_id, verdict=tally.verdict.value, runs=tally.runs,
                bad_runs=tally.bad_runs, job_id=outcome.job_id,
            ))
