"""The end of a bisection: verify the culprit, check the branch head, build the result.

Verification and head runs go through :meth:`Evidence.evaluate` like every other test, but
outside the run budget.
"""

from __future__ import annotations

from consumer.engine import adaptive, flaky, git, range_finder
from consumer.engine.adaptive import AdaptiveSearch, Decision
from consumer.engine.bayes import BayesianSearch
from consumer.engine.changepoint import GOOD_SIDE, ChangePoint
from consumer.engine.dag import Dag
from consumer.engine.errors import EngineError
from consumer.engine.evidence import Evidence
from consumer.engine.result import (
    BisectResult,
    ErrorRates,
    HeadCheck,
    RunnerUp,
    Status,
    Verification,
)
from consumer.engine.search import SearchResult, SearchStatus
from consumer.engine.verdicts import Verdict


def finish(
    ev: Evidence,
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
    rates: ErrorRates | None = None,
) -> BisectResult:
    """The result: what is given, plus every test so far, the runs spent and the strategy."""
    return BisectResult(
        status=status,
        first_bad_commit=first_bad,
        subject=subject,
        author=author,
        date=date,
        candidates=candidates,
        tested=tuple(ev.tested),
        verification=verification,
        confidence=confidence,
        runs=ev.runs,
        reason=reason,
        first_bad_job_id=job_id,
        first_result_root=result_root,
        good_commits=tuple(goods or ()),
        runner_up=runner_up,
        head=head,
        strategy=ev.strategy,
        rates=rates,
    )


def not_reproduced(ev: Evidence, bad: str) -> BisectResult:
    """The result when the bad commit did not come back bad: what its runs showed, and
    how rare the error must be if it shows there at all."""
    outcome = ev.outcomes[bad]
    what = f"error {ev.spec.error_id}" if ev.spec.error_id else "the failure"
    spent = f" ({ev.spent()} before it showed)" if ev.out_of_time() else ""
    last = f"{outcome.verdict.value} ({outcome.detail[:300]})"
    tally = ev.tally.get(bad, flaky.Tally())
    total = tally.runs + tally.skips
    if total <= 1:
        checked = f": {last}"
    else:
        skipped = f", {tally.skips} skipped" if tally.skips else ""
        bound = adaptive.hidden_rate_bound(tally.runs)
        rare = (f"; if it shows there at all, it shows in under {bound * 100:.0f} % of runs (95 % "
                f"bound: limits.reproduce_runs raises the check)" if tally.runs else "")
        checked = (f": none of {total} runs showed it ({tally.runs} usable{skipped}){rare}; "
                   f"last run: {last}")
    return finish(
        ev,
        Status.NOT_REPRODUCED,
        reason=f"{what} did not reproduce at the bad commit {bad[:12]}{spent}{checked}",
    )


async def conclude_bayesian(
    ev: Evidence, search: BayesianSearch, found: SearchResult, budget_hit: bool,
    goods: list[str],
) -> BisectResult:
    """The result of a Bayesian search: its culprit, or its credible set when it has none."""
    if found.status is SearchStatus.FOUND and found.first_bad is not None:
        culprit = found.first_bad
        parents = await git.parents_of(ev.mirror, culprit)
        verification = (flaky.posterior_verification(search, culprit, parents)
                        if ev.limits.verify else None)
        second = search.runner_up(culprit)
        return await culprit_found(
            ev, culprit, goods, found.confidence, verification=verification, posterior=True,
            runner_up=RunnerUp(second[0], round(second[1], 6)) if second else None,
            rate=search.reproduction_rate(),
        )
    reason = found.reason
    if budget_hit or found.status is SearchStatus.UNFINISHED:
        reason = f"{ev.spent()}: {reason}"
    # candidates: the credible set, most likely first; confidence: the first's probability
    return finish(ev, Status.AMBIGUOUS, reason=reason, candidates=found.candidates,
                  goods=goods, confidence=round(found.confidence, 6))


async def conclude_adaptive(
    ev: Evidence, search: AdaptiveSearch, decision: Decision, goods: list[str],
    verify_runs: int,
) -> BisectResult:
    """The result of the default search (``verify_runs``: the runs verification asked for)."""
    split = decision.split
    rates = ErrorRates(round(decision.rates.bad, 4), round(decision.rates.good, 4),
                       *((split.after_runs, split.after_bad, split.before_runs,
                          split.before_bad) if split is not None else ()))
    confidence = round(decision.confidence, 6)
    if decision.status == adaptive.FOUND and decision.commit is not None:
        culprit = decision.commit
        verification = boundary_verification(decision, verify_runs)
        second = next(((c, p) for c, p in search.model.ranked(3)
                       if c != culprit and c != GOOD_SIDE and p >= 0.01), None)
        return await culprit_found(
            ev, culprit, goods, decision.confidence,
            verification=verification if ev.limits.verify else None, posterior=True,
            runner_up=RunnerUp(second[0], round(second[1], 6)) if second else None,
            rate=decision.rates.bad if decision.rates.bad < 0.99 else None, rates=rates)
    status = {adaptive.GOOD_IS_BAD: Status.GOOD_IS_BAD, adaptive.UNDECIDED: Status.UNDECIDED,
              adaptive.AMBIGUOUS: Status.AMBIGUOUS}[decision.status]
    return finish(ev, status, reason=decision.reason, candidates=decision.candidates,
                  goods=goods, confidence=confidence, rates=rates)


def boundary_verification(decision: Decision, verify_runs: int) -> Verification:
    """What the fresh runs on both sides of the boundary showed.

    ``held``: the culprit showed the error and no parent did. When a parent did, the
    search went on (the posterior weighed it, and still names this culprit because the
    error also shows before the regression, at the rate ``q``): said so, never "held".
    """
    notes = []
    held = True
    for side in decision.sides:
        notes.append(f"{side.role} {side.commit[:12]} showed the error in {side.bad_runs} of "
                     f"{side.runs} fresh runs")
        if side.role == "culprit" and side.bad_runs == 0:
            held = False
        if side.role != "culprit" and side.bad_runs > 0:
            held = False
    if len(decision.sides) == 1:
        notes.append("root commit: no parent to test")
    rates = decision.rates
    split = decision.split
    shown = (f" (it showed in {split.after_bad} of {split.after_runs} runs from the culprit "
             f"on and {split.before_bad} of {split.before_runs} before it)" if split else "")
    notes.append(f"the error shows in ~{rates.bad:.0%} of runs from the culprit on and "
                 f"~{rates.good:.0%} before it{shown}; P(culprit) = {decision.confidence:.3f}")
    return Verification(held=held, detail="; ".join(notes), runs=verify_runs)


async def culprit_found(
    ev: Evidence,
    culprit: str,
    goods: list[str],
    confidence: float,
    *,
    verification: Verification | bool | None = True,
    runner_up: RunnerUp | None = None,
    rate: float | None = None,
    posterior: bool = False,
    rates: ErrorRates | None = None,
) -> BisectResult:
    """The ``found`` result: verified (``verification`` True: verify now, if the limits say
    so), head-checked, with the culprit's commit info.

    ``posterior``: the confidence is a posterior that already weighs every run.
    """
    if verification is True:
        verification = await verify(ev, culprit) if ev.limits.verify else None
    elif verification is False:
        verification = None
    if verification is not None and not verification.held and not posterior:
        confidence = min(confidence, 0.5)
    head = await head_check(ev, culprit, rate)
    info = await git.commit_info(ev.mirror, culprit)
    outcome = ev.outcomes.get(culprit)
    return finish(
        ev,
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
        rates=rates,
    )


async def head_check(ev: Evidence, culprit: str, rate: float | None) -> HeadCheck | None:
    """Test the branch head: does the error still show there (regressed) or not (fixed)?

    A deterministic test needs one usable run; a flaky one (``rate`` = the estimated
    reproduction rate) runs until a bad run, or until enough good runs make it unlikely
    the error merely failed to show. Head runs are outside the run budget, not the time
    budget: once it is spent the head's status is unknown.
    """
    revision = ev.spec.head_revision
    if revision is None:
        return None
    try:
        head = await git.resolve_commit(ev.mirror, revision)
    except EngineError as exc:
        ev.log.warning("head_check_failed", revision=revision, error=str(exc))
        return HeadCheck(commit=revision, status=flaky.HEAD_UNKNOWN, runs=0)
    runs_before = ev.runs
    needed = 1 if rate is None else flaky.good_runs_needed(rate, ev.limits.confidence)
    attempts = 0
    while True:
        if ev.out_of_time():  # the answer is due: the head stays untold
            return HeadCheck(commit=head, status=flaky.HEAD_UNKNOWN, runs=ev.runs - runs_before)
        outcome = await ev.evaluate(head, "head", force=attempts > 0, budgeted=False)
        attempts += 1
        status = flaky.head_status(ev.tally.get(head, flaky.Tally().add(outcome)),
                                   needed, attempts)
        if status is not None:
            return HeadCheck(commit=head, status=status, runs=ev.runs - runs_before)


async def verify(ev: Evidence, culprit: str) -> Verification:
    """Boundary check of git's search (``limits.flaky`` false): one fresh run of the culprit
    and one of each parent (repeated while it skips), the culprit to come back bad and every
    parent good.

    Fresh, never the search's own verdicts: re-reading those would check nothing. A
    deterministic test needs one run a side; what they are worth when the test may be flaky
    is in the confidence (:func:`runs_posterior`). Verification runs are outside the run
    budget.
    """
    runs_before = ev.runs
    notes: list[str] = []
    held = True
    for commit, want, role in [(culprit, Verdict.BAD, "culprit")] + [
        (p, Verdict.GOOD, "parent") for p in await git.parents_of(ev.mirror, culprit)
    ]:
        outcome = await range_finder.usable_run(ev, commit, "verify", force=True,
                                                budgeted=False)
        if outcome.verdict is not want:
            held = False
        notes.append(f"{role} {commit[:12]} {outcome.verdict.value} (retested)")
    if len(notes) == 1:
        notes.append("root commit: no parent to test")
    return Verification(held=held, detail="; ".join(notes), runs=ev.runs - runs_before)


def runs_posterior(ev: Evidence, dag: Dag, bad: str, goods: list[str], culprit: str
                   ) -> tuple[float, ErrorRates]:
    """P(``culprit``) and the error's rates, by the default search's model, over every run
    this bisection made or reused.

    Git's search takes one run a commit as the truth. That is what a deterministic test
    gives, but the same runs come from a flaky test whose runs happened to agree, so the
    confidence is what the runs tell when the test may be flaky: about 0.6-0.7 after git's
    halving and one fresh run each side of the boundary (BENCHMARKS.md), never 1.
    """
    model = _model_of_runs(ev, dag, bad, goods)
    rates = model.rates()
    split = model.split(culprit)
    return model.probability(culprit), ErrorRates(
        round(rates.bad, 4), round(rates.good, 4), split.after_runs, split.after_bad,
        split.before_runs, split.before_bad)


def good_commit_bad(ev: Evidence, dag: Dag, bad: str, goods: list[str], good: str,
                    why: str) -> BisectResult:
    """Git's search: the good commit ``good`` showed the error when the verification
    retested it, and ``why`` no older good commit is searched from. The confidence is the
    good side's posterior, as a culprit's is."""
    model = _model_of_runs(ev, dag, bad, goods)
    rates = model.rates()
    return finish(
        ev, Status.GOOD_IS_BAD,
        reason=f"the good commit {good[:12]} showed the error when retested: the regression "
               f"is older than the range ({why})",
        goods=goods, confidence=round(model.probability(GOOD_SIDE), 6),
        rates=ErrorRates(round(rates.bad, 4), round(rates.good, 4)))


def _model_of_runs(ev: Evidence, dag: Dag, bad: str, goods: list[str]) -> ChangePoint:
    model = ChangePoint(dag, bad, goods)
    for commit, outcome in ev.history:
        model.record(commit, *adaptive.usable_counts(outcome))
    return model
