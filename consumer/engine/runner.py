"""The engine loop: check the bad commit, find a good one, search, verify, report.

The search policy is a :class:`SearchStrategy`; the loop runs up to ``limits.slots`` tests
at once, each in its own worktree. Every test goes through :meth:`Evidence.evaluate`
(:mod:`consumer.engine.evidence`); the range is found by :mod:`consumer.engine.range_finder`
and the result built by :mod:`consumer.engine.conclusion`.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from consumer.engine import conclusion, git, range_finder
from consumer.engine.bayes import BayesianSearch
from consumer.engine.dag import Dag
from consumer.engine.events import PROGRESS, RANGE, STARTED, Emit, make_event
from consumer.engine.evidence import BudgetSpent, Evidence
from consumer.engine.result import BisectResult, Status
from consumer.engine.search import SearchStatus, SearchStrategy, StrategyFactory, deterministic
from consumer.engine.spec import FlakyMode, TaskSpec
from consumer.engine.testers import Tester, TesterContext, build_tester
from consumer.engine.verdicts import Outcome, Verdict
from consumer.engine.worktree import WorktreePool

__all__ = ["BATCH_GRACE_FRACTION", "BATCH_GRACE_MAX_S", "Bisection", "BudgetSpent", "run_task"]

# After one test ends, wait this fraction of its duration (at most the cap) for the others.
BATCH_GRACE_FRACTION = 0.5
BATCH_GRACE_MAX_S = 2.0


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
        self.ev = Evidence(spec, emit, mirror=mirror, tester=tester, pool=pool)
        self.limits = spec.limits
        self.emit = emit
        self.mirror = mirror
        self.strategy_factory = strategy
        self.log = self.ev.log

    async def run(self, bad: str, good: str | None) -> BisectResult:
        """Bisect between ``bad`` and ``good`` (None: find one); every event but ``result``."""
        # With several slots and a given good commit, the bad commit is checked alongside
        # the first search tests instead of before them: one round of tests less.
        overlap = (
            good is not None
            and self.limits.slots > 1
            and bad not in self.ev.known
            and self.limits.flaky is not FlakyMode.ON
        )
        if not overlap and not await range_finder.check_bad(self.ev, bad):
            return conclusion.not_reproduced(self.ev, bad)
        goods = [good] if good else None
        if goods is None:
            try:
                goods = await range_finder.find_good(self.ev, bad)
            except BudgetSpent:
                goods = None
            if goods is None:
                return conclusion.finish(
                    self.ev,
                    Status.NO_GOOD,
                    reason=f"no good commit within {self.limits.max_good_search} first-parent "
                    f"commits before {bad[:12]} (tested {len(self.ev.tested) - 1})",
                )
        dag = Dag.from_rev_list(await git.range_parents(self.mirror, bad, goods))
        if bad not in dag:
            return conclusion.finish(
                self.ev,
                Status.ERROR,
                reason=f"bad commit {bad[:12]} is an ancestor of the good commit(s) "
                f"{', '.join(g[:12] for g in goods)}",
                goods=goods,
            )
        self.emit(make_event(RANGE, good=goods, bad=bad, candidates=len(dag)))
        search = self._strategy(dag, bad)
        await self._feed(search, dag, bad)
        side = asyncio.create_task(self.ev.evaluate(bad, "check_bad")) if overlap else None
        budget_hit = await self._search(search, side=side)
        if side is not None and side.result().verdict is not Verdict.BAD:  # raises its error
            return conclusion.not_reproduced(self.ev, bad)
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
            return await conclusion.conclude_bayesian(self.ev, search, found, budget_hit, goods)
        if found.status is SearchStatus.FOUND and found.first_bad is not None:
            verification = (await conclusion.verify(self.ev, found.first_bad)
                            if self.limits.verify else None)
            if (verification is not None and not verification.held
                    and self.limits.flaky is FlakyMode.AUTO):
                # The boundary did not hold on a second look: the test is flaky.
                self.log.warning("switching_to_bayesian", reason=verification.detail)
                search = self._bayesian(dag, bad)
                await self._feed(search, dag, bad)
                budget_hit = await self._search(search)
                return await conclusion.conclude_bayesian(
                    self.ev, search, search.result(), budget_hit, goods)
            return await conclusion.culprit_found(
                self.ev, found.first_bad, goods, found.confidence, verification=verification)
        reason = found.reason
        if found.status is SearchStatus.UNFINISHED and budget_hit:
            reason = (f"run budget of {self.ev.budget} runs spent with "
                      f"{len(found.candidates)} candidates left")
        return conclusion.finish(self.ev, Status.AMBIGUOUS, reason=reason,
                                 candidates=found.candidates, goods=goods)

    def _strategy(self, dag: Dag, bad: str) -> SearchStrategy:
        if self.strategy_factory is not None:
            search = self.strategy_factory(dag, bad)
            if isinstance(search, BayesianSearch):
                self.ev.use_bayesian()
            return search
        if self.limits.flaky is FlakyMode.ON:
            return self._bayesian(dag, bad)
        return deterministic(dag, bad)

    def _bayesian(self, dag: Dag, bad: str) -> BayesianSearch:
        self.ev.use_bayesian()
        return BayesianSearch(dag, bad, confidence=self.limits.confidence)

    async def _feed(self, search: SearchStrategy, dag: Dag, bad: str) -> None:
        """Give the search what is known about the range before it proposes anything."""
        if isinstance(search, BayesianSearch):
            for commit, outcome in list(self.ev.history):  # every run counts, repeats too
                search.record(commit, outcome)
            for commit in dag.order:
                if commit in self.ev.known and commit not in self.ev.outcomes:
                    search.record(commit, await self.ev.evaluate(commit, "search"))
            return
        for commit in dag.order:
            if commit == bad:
                continue
            if commit in self.ev.outcomes:
                search.record(commit, self.ev.outcomes[commit])
            elif commit in self.ev.known:
                search.record(commit, await self.ev.evaluate(commit, "search"))

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
                room = self.ev.budget - self.ev.runs - self.ev.in_flight
                if free > 0 and room > 0:
                    for commit in search.next_commits(min(free, room), frozenset(pending.values())):
                        task = asyncio.create_task(
                            self.ev.evaluate(commit, "search", force=retest))
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
                        PROGRESS, tested=len(self.ev.tested),
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
