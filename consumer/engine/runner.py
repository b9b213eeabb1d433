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

from consumer.engine import git
from consumer.engine.dag import Dag
from consumer.engine.events import PROGRESS, RANGE, STARTED, STEP, VERDICT, Emit, make_event
from consumer.engine.result import BisectResult, Status, TestedCommit, Verification
from consumer.engine.search import SearchStatus, SearchStrategy, StrategyFactory, deterministic
from consumer.engine.spec import TaskSpec
from consumer.engine.testers import Tester, TesterContext, build_tester, tester_fingerprint
from consumer.engine.verdicts import Outcome, Verdict
from consumer.engine.worktree import WorktreePool

log = structlog.get_logger(__name__)


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
        strategy: StrategyFactory = deterministic,
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
        self._evidence: dict[str, Outcome] = {}
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
                self._reused.add(commit)
                self._note(commit, outcome, phase, reused=True)
                return outcome
        if budgeted and self._runs + self._in_flight >= self.limits.run_budget:
            raise BudgetSpent
        self._in_flight += 1
        try:
            worktree = await self.pool.acquire()
            try:
                await self.pool.checkout(worktree, commit)
                outcome = await self.tester.test(commit, worktree.path)
            finally:
                self.pool.release(worktree)
        finally:
            self._in_flight -= 1
        self._runs += outcome.runs
        self._evidence.setdefault(commit, outcome)
        self._note(commit, outcome, phase, reused=False)
        return outcome

    def _note(self, commit: str, outcome: Outcome, phase: str, *, reused: bool) -> None:
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
        if not reused:
            self.emit(make_event(
                VERDICT, commit=commit, tester_fingerprint=self.fingerprint,
                error_id=self.spec.error_id, verdict=outcome.verdict.value, runs=outcome.runs,
                bad_runs=outcome.bad_runs, job_id=outcome.job_id,
            ))

    # -- phases ----------------------------------------------------------------------------

    async def run(self, bad: str, good: str | None) -> BisectResult:
        outcome = await self.evaluate(bad, "check_bad")
        if outcome.verdict is not Verdict.BAD:
            what = f"error {self.spec.error_id}" if self.spec.error_id else "the failure"
            return self._finish(
                Status.NOT_REPRODUCED,
                reason=f"{what} did not reproduce at the bad commit {bad[:12]}: "
                f"{outcome.verdict.value} ({outcome.detail[:300]})",
            )
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
        search = self.strategy_factory(dag, bad)
        for commit in dag.order:
            if commit == bad:
                continue
            if commit in self._evidence:
                search.record(commit, self._evidence[commit])
            elif commit in self._known:
                search.record(commit, await self.evaluate(commit, "search"))
        budget_hit = await self._search(search)
        found = search.result()
        if found.status is SearchStatus.FOUND and found.first_bad is not None:
            return await self._found(found.first_bad, goods, found.confidence)
        reason = found.reason
        if found.status is SearchStatus.UNFINISHED and budget_hit:
            reason = (f"run budget of {self.limits.run_budget} runs spent with "
                      f"{len(found.candidates)} candidates left")
        return self._finish(Status.AMBIGUOUS, reason=reason, candidates=found.candidates,
                            goods=goods)

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
            if outcome.verdict is Verdict.GOOD:
                return [commit]
            if offset >= last:
                return [] if root_reached and outcome.verdict is Verdict.BAD else None
            offset *= 2
        return [] if root_reached else None

    async def _search(self, search: SearchStrategy) -> bool:
        """Test what the strategy proposes, ``slots`` at a time; True if the budget ran out."""
        pending: dict[asyncio.Task[Outcome], str] = {}
        budget_hit = False
        try:
            while True:
                free = self.limits.slots - len(pending)
                room = self.limits.run_budget - self._runs - self._in_flight
                if free > 0 and room > 0:
                    for commit in search.next_commits(min(free, room), frozenset(pending.values())):
                        task = asyncio.create_task(self.evaluate(commit, "search"))
                        pending[task] = commit
                elif free > 0 and not pending and search.next_commits(1):
                    budget_hit = True
                if not pending:
                    return budget_hit
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    commit = pending.pop(task)
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

    async def _found(self, culprit: str, goods: list[str], confidence: float) -> BisectResult:
        verification = await self._verify(culprit) if self.limits.verify else None
        if verification is not None and not verification.held:
            confidence = min(confidence, 0.5)
        info = await git.commit_info(self.mirror, culprit)
        outcome = self._evidence.get(culprit)
        return self._finish(
            Status.FOUND,
            first_bad=culprit,
            candidates=(culprit,),
            verification=verification,
            confidence=confidence,
            goods=goods,
            subject=info.subject,
            author=info.author,
            date=info.date,
            job_id=outcome.job_id if outcome else None,
            result_root=outcome.result_root if outcome else None,
        )

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
        )


async def run_task(
    spec: TaskSpec,
    emit: Emit,
    *,
    tester: Tester | None = None,
    strategy: StrategyFactory = deterministic,
) -> BisectResult:
    """Run one bisection from a spec; emits every event but the final ``result``.

    Raises ``ValidationError`` (bad tester profile) and ``EngineError`` (git, tester) for
    the caller to turn into an error result; see :func:`consumer.engine.session.run_engine`.
    """
    context = TesterContext(
        error_id=spec.error_id, different_error=spec.limits.different_error,
        task_id=spec.task_id, bad_job_id=spec.bad_job_id,
    )
    tester = tester if tester is not None else build_tester(spec.tester, context)
    emit(make_event(STARTED, repo_url=spec.repo_url, bad_commit=spec.bad_commit,
                    good_commit=spec.good_commit, error_id=spec.error_id))
    cache = git.MirrorCache(spec.cache_dir)
    mirror = await cache.ensure(spec.repo_url, wanted=[spec.bad_commit, spec.good_commit or ""])
    bad = await git.resolve_commit(mirror, spec.bad_commit)
    good = await git.resolve_commit(mirror, spec.good_commit) if spec.good_commit else None
    pool = WorktreePool(mirror, cache.lock_path(spec.repo_url), spec.resolved_work_dir,
                        size=spec.limits.slots)
    async with pool:
        bisection = Bisection(spec, emit, mirror=mirror, tester=tester, pool=pool,
                              strategy=strategy)
        return await bisection.run(bad, good)
