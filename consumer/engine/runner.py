"""The engine loop: check the bad commit, find a good one, search, verify, report.

The default search is :class:`~consumer.engine.adaptive.AdaptiveSearch` (deterministic
and flaky tests alike; it verifies and decides when to stop); ``limits.flaky: false`` or
a strategy given to :func:`run_task` runs a :class:`SearchStrategy` instead. The loop
runs up to ``limits.slots`` tests at once, each in its own worktree. Every test goes
through :meth:`Evidence.evaluate` (:mod:`consumer.engine.evidence`); the range is found
by :mod:`consumer.engine.range_finder` and the result built by
:mod:`consumer.engine.conclusion`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from consumer.engine import conclusion, git, range_finder
from consumer.engine.adaptive import FOUND, GOOD_IS_BAD, VERIFY, AdaptiveSearch, Decision, Pick
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

# Culprit probabilities a progress event carries (most likely first).
POSTERIOR_TOP = 20
# Searches of a longer range after "the good commit is bad": a flaky test's older good
# commit, kept after its runs came out good, can be bad too (then the next search says so)
STEP_BACKS = 3


def regression_may_be_older(decision: Decision, goods: list[str]) -> bool:
    """Whether the regression may be older than the range, so the search should step back.

    ``good_is_bad``; or a culprit whose parents are all good commits while one of them
    showed the error: then the good commit alone says the error shows "before" at some
    rate q, and the same runs fit a regression older than the range as well (a found good
    commit that was bad, showing the error in 2 of 5 runs, gave q = 0.4 and a wrong culprit
    at 0.986: bench/engine_step_back.py --no-good). Older commits tell the two apart.
    """
    if not goods:
        return False
    if decision.status == GOOD_IS_BAD:
        return True
    if decision.status != FOUND:
        return False
    parents = [s for s in decision.sides if s.role == "parent"]
    return bool(parents) and all(s.commit in goods for s in parents) and any(
        s.bad_runs for s in decision.sides if s.commit in goods)


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
        self.ev.forget_known(bad)  # reuse never decides the bad commit's check
        if self.strategy_factory is None and self.limits.flaky is not FlakyMode.OFF:
            return await self._run_adaptive(bad, good)
        return await self._run_classic(bad, good)

    async def _range(self, bad: str, good: str | None
                     ) -> tuple[Dag, list[str]] | BisectResult:
        """The range to search (the bad commit already checked), or the result ending it."""
        goods = [good] if good else None
        if goods is None:
            try:
                goods = await range_finder.find_good(self.ev, bad)
            except BudgetSpent:
                return conclusion.finish(
                    self.ev, Status.NO_GOOD,
                    reason=f"{self.ev.spent()} before a good commit was found (tested "
                    f"{len(self.ev.tested) - 1})")
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
        return dag, goods

    async def _run_adaptive(self, bad: str, good: str | None) -> BisectResult:
        """The default search (:mod:`consumer.engine.adaptive`) over every run made."""
        if not await range_finder.check_bad(self.ev, bad):
            return conclusion.not_reproduced(self.ev, bad)
        found = await self._range(bad, good)
        if isinstance(found, BisectResult):
            return found
        dag, goods = found
        search = await self._adaptive_search(dag, bad, goods, goods_given=good is not None)
        decision, verify_runs = await self._adaptive_loop(search)
        step_backs = 0
        while regression_may_be_older(decision, goods) and step_backs < STEP_BACKS:
            # The regression is older than the range: step back from the good commit (1,
            # 2, 4, ... first-parent commits, as when no good commit is given) and search
            # the longer range with every run made so far. A candidate is confirmed at the
            # rate the search measured: the good commit's own runs (the error in all of
            # them) would take a flaky test for a deterministic one.
            step_backs += 1
            try:
                older = await range_finder.find_good(self.ev, goods[0],
                                                     rate=decision.rates.bad)
            except BudgetSpent:
                older = None
            if not older:
                break
            self.log.info("good_commit_is_bad", good=goods[0], older_good=older[0])
            dag = Dag.from_rev_list(await git.range_parents(self.mirror, bad, older))
            self.emit(make_event(RANGE, good=older, bad=bad, candidates=len(dag)))
            goods = older
            search = await self._adaptive_search(dag, bad, goods, goods_given=False)
            decision, more = await self._adaptive_loop(search)
            verify_runs += more
        return await conclusion.conclude_adaptive(self.ev, search, decision, goods, verify_runs)

    async def _adaptive_search(self, dag: Dag, bad: str, goods: list[str], *,
                               goods_given: bool = True) -> AdaptiveSearch:
        """A default search over ``dag`` that starts from every run made so far;
        ``goods_given`` False for good commits found by stepping back."""
        search = AdaptiveSearch(dag, bad, goods, confidence=self.limits.confidence,
                                verify=self.limits.verify, goods_given=goods_given)
        for commit, outcome in list(self.ev.history):  # every run, repeats too
            search.record(commit, outcome, fresh=outcome is not self.ev.known.get(commit))
        for commit in [*dag.order, *goods]:  # known verdicts of earlier bisections
            if commit in self.ev.known and commit not in self.ev.outcomes:
                search.record(commit, await self.ev.evaluate(commit, "search"), fresh=False)
        return search

    async def _adaptive_loop(self, search: AdaptiveSearch) -> tuple[Decision, int]:
        """Run what the search asks for, ``slots`` at a time, until it decides."""
        pending: dict[asyncio.Task[Outcome], Pick] = {}
        verify_runs = 0
        try:
            while True:
                decision = search.decision(
                    runs_used=self.ev.runs, budget=self.ev.budget,
                    time_spent=self.ev.spent() if self.ev.out_of_time() else None)
                if decision is not None and not pending:
                    return decision, verify_runs
                free = self.limits.slots - len(pending)
                room = self.ev.room()
                if decision is None and free > 0 and room > 0:
                    busy = Counter(p.commit for p in pending.values())
                    for pick in search.next_picks(min(free, room), busy):
                        task = asyncio.create_task(self.ev.evaluate(
                            pick.commit, pick.phase, force=True, budgeted=False))
                        pending[task] = pick
                if not pending:
                    exhausted = search.decision(runs_used=self.ev.runs, budget=self.ev.budget,
                                                exhausted=True)
                    assert exhausted is not None  # exhausted=True always decides
                    return exhausted, verify_runs
                done = await self._wait_batch(pending)
                for task in done:
                    pick = pending.pop(task)
                    outcome = task.result()
                    search.record(pick.commit, outcome, phase=pick.phase)
                    if pick.phase == VERIFY and not outcome.reused:
                        verify_runs += outcome.runs
                    # Where the culprit probability stands now (the dashboard draws it).
                    self.emit(make_event(
                        PROGRESS, tested=len(self.ev.tested),
                        candidates_left=len(search.model.credible_set(self.limits.confidence)),
                        est_steps_left=math.ceil(search.runs_needed(search.model.rates())),
                        posterior=[[commit, round(prob, 4)]
                                   for commit, prob in search.model.ranked(POSTERIOR_TOP)],
                    ))
        finally:
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _run_classic(self, bad: str, good: str | None) -> BisectResult:
        """Git's search (``limits.flaky`` false) or a strategy given to :func:`run_task`."""
        self.ev.strategy = "deterministic"
        # With several slots and a given good commit, the bad commit is checked alongside
        # the first search tests instead of before them: one round of tests less.
        overlap = good is not None and self.limits.slots > 1 and bad not in self.ev.known
        if not overlap and not await range_finder.check_bad(self.ev, bad):
            return conclusion.not_reproduced(self.ev, bad)
        found_range = await self._range(bad, good)
        if isinstance(found_range, BisectResult):
            return found_range
        dag, goods = found_range
        side = asyncio.create_task(range_finder.usable_run(
            self.ev, bad, "check_bad", force=False)) if overlap else None
        stepped_back = False
        while True:
            search = self._strategy(dag, bad)
            await self._feed(search, dag, bad)
            budget_hit = await self._search(search, side=side)
            if side is not None and side.result().verdict is not Verdict.BAD:  # raises its error
                return conclusion.not_reproduced(self.ev, bad)
            side = None
            found = search.result()
            if isinstance(search, BayesianSearch):
                return await conclusion.conclude_bayesian(self.ev, search, found, budget_hit,
                                                          goods)
            if found.status is not SearchStatus.FOUND or found.first_bad is None:
                break
            culprit = found.first_bad
            verification = (await conclusion.verify(self.ev, culprit)
                            if self.limits.verify else None)
            parents = await git.parents_of(self.mirror, culprit)
            shown = [g for g in goods if g in parents and g in self.ev.outcomes
                     and self.ev.outcomes[g].verdict is Verdict.BAD]
            if verification is not None and shown:
                # The good commit showed the error: the regression is older than the range.
                # Step back from it once, as the default search does, and search on.
                if stepped_back:
                    older, why = None, "the older good commit it stepped back to showed it too"
                else:
                    older, why = await self._older_good(shown[0])
                if not older:
                    return conclusion.good_commit_bad(self.ev, dag, bad, goods, shown[0], why)
                self.log.info("good_commit_is_bad", good=shown[0], older_good=older[0])
                dag = Dag.from_rev_list(await git.range_parents(self.mirror, bad, older))
                self.emit(make_event(RANGE, good=older, bad=bad, candidates=len(dag)))
                goods, stepped_back = older, True
                continue
            confidence, rates = conclusion.runs_posterior(self.ev, dag, bad, goods, culprit)
            if verification is not None:
                verification = dataclasses.replace(verification, detail=(
                    f"{verification.detail}; P(culprit) = {confidence:.3f} if the test may be "
                    f"flaky (git's search: one run a commit)"))
            # A boundary the fresh runs contradict keeps its cut to 0.5 (culprit_found).
            return await conclusion.culprit_found(
                self.ev, culprit, goods, confidence, verification=verification, rates=rates)
        reason = found.reason
        if found.status is SearchStatus.UNFINISHED and budget_hit:
            reason = f"{self.ev.spent()} with {len(found.candidates)} candidates left"
        return conclusion.finish(self.ev, Status.AMBIGUOUS, reason=reason,
                                 candidates=found.candidates, goods=goods)

    async def _older_good(self, good: str) -> tuple[list[str] | None, str]:
        """A good commit older than ``good`` (1, 2, 4, ... first-parent commits back), or
        None and why there is none."""
        try:
            older = await range_finder.find_good(self.ev, good)
        except BudgetSpent:
            return None, f"{self.ev.spent()} before an older good commit was found"
        if older is None:
            return None, (f"no good commit within {self.limits.max_good_search} first-parent "
                          f"commits before it")
        if not older:
            return None, "every first-parent commit back to the root shows it"
        return older, ""

    def _strategy(self, dag: Dag, bad: str) -> SearchStrategy:
        if self.strategy_factory is not None:
            search = self.strategy_factory(dag, bad)
            if isinstance(search, BayesianSearch):
                self.ev.strategy = "bayesian"
            return search
        return deterministic(dag, bad)

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
                room = self.ev.room()
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
    async def _wait_batch(pending: Mapping[asyncio.Task[Outcome], object]
                          ) -> set[asyncio.Task[Outcome]]:
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

    ``strategy`` None: the default search (git's with ``limits.flaky: false``). Raises
    ``ValidationError`` (bad tester profile) and ``EngineError`` (git, tester) for the
    caller to turn into an error result; see :func:`consumer.engine.session.run_engine`.
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
