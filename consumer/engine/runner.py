"""The engine loop: check the bad commit, find a good one, search, verify, report.

Every test goes through :meth:`Bisection.evaluate`, which reuses what is already known (a
commit is never tested twice), keeps the run budget, and emits ``step`` and ``verdict``
events. The search policy is a :class:`SearchStrategy`; the loop runs up to
``limits.slots`` tests at once, each in its own worktree.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import structlog

from consumer.engine import flaky, git
from consumer.engine.bayes import BayesianSearch
from consumer.engine.dag import Dag
from consumer.engine.errors import EngineError
from consumer.engine.events import PROGRESS, RANGE, STARTED, STEP, VERDICT, Emit, make_event
from consumer.engine.result import (
    BisectResult,
    HeadCheck,
    RunnerUp,
    Status,
    TestedCommit,
    Verification,
)
from consumer.engine.search import (
    SearchResult,
    SearchStatus,
    SearchStrategy,
    StrategyFactory,
    deterministic,
)
from consumer.engine.spec import FlakyMode, TaskSpec
from consumer.engine.testers import Tester, TesterContext, build_tester, tester_fingerprint
from consumer.engine.verdicts import Outcome, Verdict
from consumer.engine.worktree import WorktreePool

log = structlog.get_logger(__name__)


# After one test ends, wait this fraction of its duration (at most the cap) for the others.
BATCH_GRACE_FRACTION = 0.5
BATCH_GRACE_MAX_S = 2.0


class BudgetSpent(Exception):
    """The run budget does not allow another test."""


class Bisection:
    """One bisection over a prepared mirror and worktree pool."""

    def __init__(
        self,
        spec: TaskSpec,
        emit: Emit,
        *,
        mirror: Path,
        tester: Tester,
        pool: WorktreePool,
        strategy: StrategyFactory | None = None,
    ) -> None:
        self.spec = spec
        self.limits = spec.limits
        self.emit = emit
        self.mirror = mirror
        self.tester = tester
        self.pool = pool
        self.strategy_factory = strategy
        self.fingerprint = tester_fingerprint(spec.tester)
        self.log = log.bind(task_id=spec.task_id)
        self._known = {
            k.commit: Outcome(
                verdict=k.verdict, runs=k.runs, bad_runs=k.bad_runs, job_id=k.job_id,
                detail="known verdict",
            )
            for k in spec.known_verdicts
        }
        self._evidence: dict[str, Outcome] = {}  # the first outcome of each commit
        self._history: list[tuple[str, Outcome]] = []  # every outcome, known ones included
        self._tally: dict[str, flaky.Tally] = {}  # runs per commit, for verdict events
        self._budget = self.limits.run_budget
        self._strategy_name = "deterministic"
        self._reused: set[str] = set()
        self._tested: list[TestedCommit] = []
        self._runs = 0
        self._in_flight = 0
        self._seq = 0

    # -- tests -----------------------------------------------------------------------------

    async def evaluate(
        self, commit: str, phase: str, *, force: bool = False, budgeted: bool = True
    ) -> Outcome:
        """The verdict on ``commit``: known or already tested, else tested now."""
        if not force:
            if commit in self._evidence:
                return self._evidence[commit]
            if commit in self._known:
                outcome = self._known[commit]
                self._evidence[commit] = outcome
                self._history.append((commit, outcome))
                self._tally[commit] = flaky.Tally().add(outcome)
                self._reused.add(commit)
                self._note(commit, outcome, phase, reused=True, known=True)
                return outcome
        if commit in self._known and commit not in self._tally:
            # A retest of a known commit: the stored verdict grows by this run.
            self._tally[commit] = flaky.Tally().add(self._known[commit])
        if budgeted and self._runs + self._in_flight >= self._budget:
            raise BudgetSpent
        self._in_flight += 1
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
            self._in_flight -= 1
        if not outcome.reused:
            self._runs += outcome.runs
        self._evidence.setdefault(commit, outcome)
        self._history.append((commit, outcome))
        self._tally[commit] = self._tally.get(commit, flaky.Tally()).add(outcome)
        self._note(commit, outcome, phase, reused=outcome.reused)
        return outcome

    def _note(
        self, commit: str, outcome: Outcome, phase: str, *, reused: bool, known: bool = False
    ) -> None:
        self._seq += 1
        self._tested.append(TestedCommit(commit, outcome.verdict.value, phase, reused))
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
            tally = self._tally[commit]
            self.emit(make_event(
                VERDICT, commit=commit, tester_fingerprint=self.fingerprint,
                error_id=self.spec.error_id, verdict=tally.verdict.value, runs=tally.runs,
                bad_runs=tally.bad_runs, job_id=outcome.job_id,
            ))

    # -- phases ----------------------------------------------------------------------------

    async def run(self, bad: str, good: str | None) -> BisectResult:
        # With several slots and a given good commit, the bad commit is checked alongside
        # the first search tests instead of before them: one round of tests less.
        overlap = (
            good is not None
            and self.limits.slots > 1
            and bad not in self._known
            and self.limits.flaky is not FlakyMode.ON
        )
        if not overlap and not await self._check_bad(bad):
            return self._not_reproduced(bad)
        goods = [good] if good else None
        if goods is None:
            try:
                goods = await self._find_good(bad)
            except BudgetSpent:
                goods = None
            if goods is None:
                return self._finish(
                    Status.NO_GOOD,
                    reason=f"no good commit within {self.limits.max_good_search} first-parent "
                    f"commits before {bad[:12]} (tested {len(self._tested) - 1})",
                )
        dag = Dag.from_rev_list(await git.range_parents(self.mirror, bad, goods))
        if bad not in dag:
            return self._finish(
                Status.ERROR,
                reason=f"bad commit {bad[:12]} is an ancestor of the good commit(s) "
                f"{', '.join(g[:12] for g in goods)}",
                goods=goods,
            )
        self.emit(make_event(RANGE, good=goods, bad=bad, candidates=len(dag)))
        search = self._strategy(dag, bad)
        await self._feed(search, dag, bad)
        side = asyncio.create_task(self.evaluate(bad, "check_bad")) if overlap else None
        budget_hit = await self._search(search, side=side)
        if side is not None and side.result().verdict is not Verdict.BAD:  # raises its error
            return self._not_reproduced(bad)
        found = search.result()
        if (
            found.status is SearchStatus.INCONSISTENT
            and self.limits.flaky is FlakyMode.AUTO
            and not isinstance(search, BayesianSearch)
        ):
            # Contradicting verdicts: the test is flaky. Every run so far is evidence.
            self.log.warning("switching_to_bayesian", reason=found.reason)
            search = self._bayesian(dag, bad)
            await self._feed(search, dag, bad)
            budget_hit = await self._search(search)
            found = search.result()
        if isinstance(search, BayesianSearch):
            return await self._conclude_bayesian(search, found, budget_hit, goods)
        if found.status is SearchStatus.FOUND and found.first_bad is not None:
            verification = await self._verify(found.first_bad) if self.limits.verify else None
            if (verification is not None and not verification.held
                    and self.limits.flaky is FlakyMode.AUTO):
                # The boundary did not hold on a second look: the test is flaky.
                self.log.warning("switching_to_bayesian", reason=verification.detail)
                search = self._bayesian(dag, bad)
                await self._feed(search, dag, bad)
                budget_hit = await self._search(search)
                return await self._conclude_bayesian(search, search.result(), budget_hit, goods)
            return await self._found(found.first_bad, goods, found.confidence,
                                     verification=verification)
        reason = found.reason
        if found.status is SearchStatus.UNFINISHED and budget_hit:
            reason = (f"run budget of {self._budget} runs spent with "
                      f"{len(found.candidates)} candidates left")
        return self._finish(Status.AMBIGUOUS, reason=reason, candidates=found.candidates,
                            goods=goods)

    def _not_reproduced(self, bad: str) -> BisectResult:
        outcome = self._evidence[bad]
        what = f"error {self.spec.error_id}" if self.spec.error_id else "the failure"
        return self._finish(
            Status.NOT_REPRODUCED,
            reason=f"{what} did not reproduce at the bad commit {bad[:12]}: "
            f"{outcome.verdict.value} ({outcome.detail[:300]})",
        )

    def _strategy(self, dag: Dag, bad: str) -> SearchStrategy:
        if self.strategy_factory is not None:
            search = self.strategy_factory(dag, bad)
            if isinstance(search, BayesianSearch):
                self._use_bayesian()
            return search
        if self.limits.flaky is FlakyMode.ON:
            return self._bayesian(dag, bad)
        return deterministic(dag, bad)

    def _bayesian(self, dag: Dag, bad: str) -> BayesianSearch:
        self._use_bayesian()
        return BayesianSearch(dag, bad, confidence=self.limits.confidence)

    def _use_bayesian(self) -> None:
        self._strategy_name = "bayesian"
        self._budget = self.limits.budget_for(bayesian=True)

    async def _feed(self, search: SearchStrategy, dag: Dag, bad: str) -> None:
        """Give the search what is known about the range before it proposes anything."""
        if isinstance(search, BayesianSearch):
            for commit, outcome in list(self._history):  # every run counts, repeats too
                search.record(commit, outcome)
            for commit in dag.order:
                if commit in self._known and commit not in self._evidence:
                    search.record(commit, await self.evaluate(commit, "search"))
            return
        for commit in dag.order:
            if commit == bad:
                continue
            if commit in self._evidence:
                search.record(commit, self._evidence[commit])
            elif commit in self._known:
                search.record(commit, await self.evaluate(commit, "search"))

    async def _check_bad(self, bad: str) -> bool:
        """Test the bad commit; a flaky test gets up to a few more runs to show the error."""
        outcome = await self.evaluate(bad, "check_bad")
        if outcome.verdict is Verdict.BAD:
            return True
        if self.limits.flaky is not FlakyMode.ON or bad in self._known:
            return False
        with contextlib.suppress(BudgetSpent):
            for _ in range(flaky.REPRODUCE_TRIES - 1):
                if self._tally[bad].runs >= flaky.REPRODUCE_USABLE:
                    break
                if (await self.evaluate(bad, "check_bad", force=True)).verdict is Verdict.BAD:
                    return True
        return False

    async def _confirmed_good(self, commit: str, bad: str) -> bool:
        """A flaky test's good verdict on a candidate good commit, repeated until it is
        unlikely that the error merely failed to show; any bad run makes it bad."""
        if self.limits.flaky is not FlakyMode.ON:
            return True
        rate = flaky.Tally().merge(self._tally.get(bad)).rate_estimate()
        needed = flaky.good_runs_needed(rate, self.limits.confidence)
        while (tally := self._tally.get(commit, flaky.Tally())).bad_runs == 0:
            if tally.runs >= needed or tally.runs + tally.skips >= flaky.CONFIRM_TRIES:
                return tally.runs >= needed
            await self.evaluate(commit, "find_good", force=True)
        return False

    async def _find_good(self, bad: str) -> list[str] | None:
        """Step back 1, 2, 4, ... first-parent commits from ``bad`` until one is good.

        A bad root commit ends the walk with no good commit at all (``[]``): then the root
        itself is the first bad commit.
        """
        chain = await git.first_parent_chain(self.mirror, bad, self.limits.max_good_search)
        last = len(chain) - 1
        root_reached = last < self.limits.max_good_search or not await git.parents_of(
            self.mirror, chain[last]
        )
        offset = 1
        while last >= 1:
            commit = chain[min(offset, last)]
            outcome = await self.evaluate(commit, "find_good")
            if outcome.verdict is Verdict.GOOD and await self._confirmed_good(commit, bad):
                return [commit]
            if offset >= last:
                return [] if root_reached and outcome.verdict is Verdict.BAD else None
            offset *= 2
        return [] if root_reached else None

    async def _search(
        self, search: SearchStrategy, *, side: asyncio.Task[Outcome] | None = None
    ) -> bool:
        """Test what the strategy proposes, ``slots`` at a time; True if the budget ran out.

        ``side``: the bad commit's check running alongside (it holds a slot); when it does
        not come back bad the search stops at once.
        """
        pending: dict[asyncio.Task[Outcome], str] = {}
        if side is not None:
            pending[side] = ""
        budget_hit = False
        retest = bool(getattr(search, "retests", False))
        try:
            while True:
                free = self.limits.slots - len(pending)
                room = self._budget - self._runs - self._in_flight
                if free > 0 and room > 0:
                    for commit in search.next_commits(min(free, room), frozenset(pending.values())):
                        task = asyncio.create_task(
                            self.evaluate(commit, "search", force=retest))
                        pending[task] = commit
                elif free > 0 and not pending and search.next_commits(1):
                    budget_hit = True
                if not pending:
                    return budget_hit
                done = await self._wait_batch(pending)
                for task in done:
                    commit = pending.pop(task)
                    if task is side:
                        if task.exception() is not None or task.result().verdict is not Verdict.BAD:
                            return budget_hit
                        continue
                    search.record(commit, task.result())
                    self.emit(make_event(
                        PROGRESS, tested=len(self._tested),
                        candidates_left=search.candidates_left(),
                        est_steps_left=search.est_steps_left(),
                    ))
        finally:
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    @staticmethod
    async def _wait_batch(pending: dict[asyncio.Task[Outcome], str]) -> set[asyncio.Task[Outcome]]:
        """The tests done now, plus those finishing within a short grace after the first.

        Tests started together usually end together; taking them as one batch lets the next
        proposals use all their verdicts, instead of filling a slot on stale knowledge.
        """
        done, rest = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if rest:
            took = max((t.result().duration_s for t in done if not t.exception()), default=0.0)
            grace = min(BATCH_GRACE_MAX_S, BATCH_GRACE_FRACTION * took)
            if grace > 0:
                more, _ = await asyncio.wait(rest, timeout=grace)
                done |= more
        return done

    async def _conclude_bayesian(
        self, search: BayesianSearch, found: SearchResult, budget_hit: bool, goods: list[str]
    ) -> BisectResult:
        if found.status is SearchStatus.FOUND and found.first_bad is not None:
            culprit = found.first_bad
            parents = await git.parents_of(self.mirror, culprit)
            verification = (flaky.posterior_verification(search, culprit, parents)
                            if self.limits.verify else None)
            second = search.runner_up(culprit)
            return await self._found(
                culprit, goods, found.confidence, verification=verification, posterior=True,
                runner_up=RunnerUp(second[0], round(second[1], 6)) if second else None,
                rate=search.reproduction_rate(),
            )
        reason = found.reason
        if budget_hit or found.status is SearchStatus.UNFINISHED:
            reason = f"run budget of {self._budget} runs spent: {reason}"
        # candidates: the credible set, most likely first; confidence: the first's probability
        return self._finish(Status.AMBIGUOUS, reason=reason, candidates=found.candidates,
                            goods=goods, confidence=round(found.confidence, 6))

    async def _found(
        self,
        culprit: str,
        goods: list[str],
        confidence: float,
        *,
        verification: Verification | bool | None = True,
        runner_up: RunnerUp | None = None,
        rate: float | None = None,
        posterior: bool = False,
    ) -> BisectResult:
        """``posterior``: the confidence is a posterior that already weighs every run."""
        if verification is True:
            verification = await self._verify(culprit) if self.limits.verify else None
        elif verification is False:
            verification = None
        if verification is not None and not verification.held and not posterior:
            confidence = min(confidence, 0.5)
        head = await self._head_check(culprit, rate)
        info = await git.commit_info(self.mirror, culprit)
        outcome = self._evidence.get(culprit)
        return self._finish(
            Status.FOUND,
            first_bad=culprit,
            candidates=(culprit,),
            verification=verification,
            confidence=round(confidence, 6),
            goods=goods,
            subject=info.subject,
            author=info.author,
            date=info.date,
            job_id=outcome.job_id if outcome else None,
            result_root=outcome.result_root if outcome else None,
            runner_up=runner_up,
            head=head,
        )

    async def _head_check(self, culprit: str, rate: float | None) -> HeadCheck | None:
        """Test the branch head: does the error still show there (regressed) or not (fixed)?

        A deterministic test needs one usable run; a flaky one (``rate`` = the estimated
        reproduction rate) runs until a bad run, or until enough good runs make it unlikely
        the error merely failed to show. Head runs are outside the run budget.
        """
        revision = self.spec.head_revision
        if revision is None:
            return None
        try:
            head = await git.resolve_commit(self.mirror, revision)
        except EngineError as exc:
            self.log.warning("head_check_failed", revision=revision, error=str(exc))
            return HeadCheck(commit=revision, status=flaky.HEAD_UNKNOWN, runs=0)
        runs_before = self._runs
        needed = 1 if rate is None else flaky.good_runs_needed(rate, self.limits.confidence)
        attempts = 0
        while True:
            outcome = await self.evaluate(head, "head", force=attempts > 0, budgeted=False)
            attempts += 1
            status = flaky.head_status(self._tally.get(head, flaky.Tally().add(outcome)),
                                       needed, attempts)
            if status is not None:
                return HeadCheck(commit=head, status=status, runs=self._runs - runs_before)

    async def _verify(self, culprit: str) -> Verification:
        """Boundary check: the culprit bad and every parent good.

        Evidence already gathered counts (the search nearly always tested both sides of the
        boundary); a side without a verdict of ours is tested now. ``verify: "retest"``
        reruns both sides regardless. Verification runs are outside the run budget.
        """
        retest = self.limits.verify_retest
        runs_before = self._runs
        notes: list[str] = []
        held = True
        for commit, want, role in [(culprit, Verdict.BAD, "culprit")] + [
            (p, Verdict.GOOD, "parent") for p in await git.parents_of(self.mirror, culprit)
        ]:
            had = commit in self._evidence
            outcome = await self.evaluate(commit, "verify", force=retest, budgeted=False)
            if retest:
                how = "retested"
            elif not had:
                how = "tested now"
            else:
                how = "known verdict" if commit in self._reused else "tested during the search"
            if outcome.verdict is not want:
                held = False
            notes.append(f"{role} {commit[:12]} {outcome.verdict.value} ({how})")
        if len(notes) == 1:
            notes.append("root commit: no parent to test")
        return Verification(held=held, detail="; ".join(notes), runs=self._runs - runs_before)

    def _finish(
        self,
        status: Status,
        *,
        reason: str | None = None,
        first_bad: str | None = None,
        candidates: tuple[str, ...] = (),
        verification: Verification | None = None,
        confidence: float = 0.0,
        goods: list[str] | None = None,
        subject: str | None = None,
        author: str | None = None,
        date: str | None = None,
        job_id: str | None = None,
        result_root: str | None = None,
        runner_up: RunnerUp | None = None,
        head: HeadCheck | None = None,
    ) -> BisectResult:
        return BisectResult(
            status=status,
            first_bad_commit=first_bad,
            subject=subject,
            author=author,
            date=date,
            candidates=candidates,
            tested=tuple(self._tested),
            verification=verification,
            confidence=confidence,
            runs=self._runs,
            reason=reason,
            first_bad_job_id=job_id,
            first_result_root=result_root,
            good_commits=tuple(goods or ()),
            runner_up=runner_up,
            head=head,
            strategy=self._strategy_name,
        )


async def run_task(
    spec: TaskSpec,
    emit: Emit,
    *,
    tester: Tester | None = None,
    strategy: StrategyFactory | None = None,
) -> BisectResult:
    """Run one bisection from a spec; emits every event but the final ``result``.

    ``strategy`` None: the spec decides (``limits.flaky``: deterministic, Bayesian, or
    deterministic until verdicts contradict). Raises ``ValidationError`` (bad tester
    profile) and ``EngineError`` (git, tester) for the caller to turn into an error result;
    see :func:`consumer.engine.session.run_engine`.
    """
    context = TesterContext(
        error_id=spec.error_id, different_error=spec.limits.different_error,
        task_id=spec.task_id, bad_job_id=spec.bad_job_id, db_url=spec.db_url,
        scheduler_url=spec.scheduler_url, repo_url=spec.repo_url,
    )
    owned = tester is None
    tester = tester if tester is not None else build_tester(spec.tester, context)
    try:
        emit(make_event(STARTED, repo_url=spec.repo_url, bad_commit=spec.bad_commit,
                        good_commit=spec.good_commit, error_id=spec.error_id))
        cache = git.MirrorCache(spec.cache_dir)
        wanted = [spec.bad_commit, spec.good_commit or "", spec.head_revision or ""]
        mirror = await cache.ensure(spec.repo_url, wanted=wanted)
        bad = await git.resolve_commit(mirror, spec.bad_commit)
        good = await git.resolve_commit(mirror, spec.good_commit) if spec.good_commit else None
        pool = WorktreePool(mirror, cache.lock_path(spec.repo_url), spec.resolved_work_dir,
                            size=spec.limits.slots)
        async with pool:
            if spec.limits.slots > 1 and getattr(tester, "needs_worktree", True):
                await pool.prepare()
            bisection = Bisection(spec, emit, mirror=mirror, tester=tester, pool=pool,
                                  strategy=strategy)
            return await bisection.run(bad, good)
    finally:
        close = getattr(tester, "aclose", None)
        if owned and close is not None:
            await close()
