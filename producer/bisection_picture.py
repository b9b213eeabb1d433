"""The picture of one bisection: the tested commits of its range on a strip, coloured by
verdict with their run counts, the culprit marked, and for a flaky search the culprit
probabilities the result gives. Geometry only; the ``picture`` macro of
``templates/_macros.html`` draws it as SVG.

The step rows do not record where a commit lies in the range (nor the range's size), so the
strip places tested commits in history order, evenly spaced. That order follows from how a
bisection narrows its range: each good commit it tests is newer than the goods before it,
each bad commit older than the bads before it. HEAD, tested after the search, goes right of
the known bad commit.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.models import Step, Task, Verdict
from producer.bisection_view import tested_phases
from producer.report import result_of, short

SPACING = 64  # SVG units (pixels at 1:1) between two tested commits
MARGIN = 48
STRIP_Y = 58
HEIGHT = 128
BAR_TOP = 150
BAR_HEIGHT = 70


@dataclass(frozen=True)
class Point:
    commit: str
    label: str
    verdict: str  # good, bad, skip, flaky (both verdicts seen)
    runs: int
    bad_runs: int
    order: int  # when it was first tested, from 1
    x: int
    culprit: bool = False
    head: bool = False

    @property
    def runs_text(self) -> str:
        if self.verdict == "flaky" or (self.bad_runs and self.bad_runs != self.runs):
            return f"{self.bad_runs}/{self.runs} bad"
        return f"{self.runs} run{'' if self.runs == 1 else 's'}"


@dataclass(frozen=True)
class Bar:
    """A culprit probability of the result, drawn at its commit."""

    x: int
    top: int
    height: int
    label: str


@dataclass(frozen=True)
class Picture:
    points: tuple[Point, ...]
    width: int
    height: int
    given_good: str | None  # a good commit given with the task (not tested), left end
    known_bad: str | None  # the job's bad commit while it is not tested yet, right end
    known_bad_x: int
    boundary_x: int | None  # between the culprit and the newest good commit
    bars: tuple[Bar, ...]
    flaky: bool

    @property
    def empty(self) -> bool:
        return not self.points and not self.given_good and not self.known_bad


@dataclass
class _Tally:
    commit: str
    first_seq: int
    runs: int = 0
    bad_runs: int = 0
    verdicts: set[str] | None = None
    last: str = "skip"


def _tallies(steps: list[Step]) -> list[_Tally]:
    by_commit: dict[str, _Tally] = {}
    for order, step in enumerate(steps):
        tally = by_commit.setdefault(step.commit, _Tally(step.commit, order, verdicts=set()))
        runs = max(step.runs, 1)
        tally.runs += runs
        # A bad verdict that counted no runs (an engine reporting the verdict only) is bad
        # in every run; otherwise the recorded count.
        tally.bad_runs += step.bad_runs or (runs if step.verdict is Verdict.BAD else 0)
        assert tally.verdicts is not None
        tally.verdicts.add(step.verdict.value)
        tally.last = step.verdict.value
    return list(by_commit.values())


def _verdict(tally: _Tally) -> str:
    verdicts = tally.verdicts or set()
    if {Verdict.GOOD.value, Verdict.BAD.value} <= verdicts or (
            0 < tally.bad_runs < tally.runs):
        return "flaky"
    return tally.last


def build(task: Task, steps: list[Step]) -> Picture:
    tallies = _tallies(steps)
    phases = tested_phases(task)
    head = [t for t in tallies if phases.get(t.commit) == "head"]
    rest = [t for t in tallies if t not in head]
    culprit = task.bad_commit

    def side(tally: _Tally) -> str:
        if tally.commit == culprit:
            return "bad"
        verdict = _verdict(tally)
        if verdict == "flaky":
            return "bad" if tally.bad_runs else "good"
        return verdict

    goods = sorted((t for t in rest if side(t) == "good"), key=lambda t: t.first_seq)
    skips = sorted((t for t in rest if side(t) == "skip"), key=lambda t: t.first_seq)
    bads = sorted((t for t in rest if side(t) == "bad"), key=lambda t: -t.first_seq)
    ordered = [*goods, *skips, *bads, *head]
    given = task.good_commit if task.good_commit and task.good_commit not in {
        t.commit for t in tallies} else None
    first_x = MARGIN + (SPACING if given else 0)
    points = tuple(
        Point(commit=t.commit, label=short(t.commit, 7), verdict=_verdict(t), runs=t.runs,
              bad_runs=t.bad_runs, order=t.first_seq + 1, x=first_x + index * SPACING,
              culprit=t.commit == culprit, head=t in head)
        for index, t in enumerate(ordered))
    tested = {t.commit for t in tallies}
    known_bad = task.known_bad_commit if task.known_bad_commit and (
        task.known_bad_commit not in tested) else None
    last_x = points[-1].x if points else first_x - SPACING
    known_bad_x = last_x + SPACING
    width = (known_bad_x if known_bad else last_x) + MARGIN
    boundary = next((p.x - SPACING // 2 for p in points if p.culprit), None)
    bars = _bars(task, points)
    flaky = bool(bars) or any(p.verdict == "flaky" for p in points)
    height = BAR_TOP + BAR_HEIGHT + 24 if bars else HEIGHT
    return Picture(points, max(width, 2 * MARGIN + SPACING), height, given, known_bad,
                   known_bad_x, boundary, bars, flaky)


def _bars(task: Task, points: tuple[Point, ...]) -> tuple[Bar, ...]:
    """The culprit's probability and the runner-up's, when the result gives a runner-up
    (a flaky search); the per-step probabilities are drawn by producer/dashboard_posterior.py."""
    runner_up = result_of(task).get("runner_up")
    if not isinstance(runner_up, dict) or task.confidence is None:
        return ()
    at = {p.commit: p.x for p in points}
    bars = []
    for commit, probability in ((task.bad_commit, task.confidence),
                                (runner_up.get("commit"), runner_up.get("probability"))):
        if isinstance(commit, str) and commit in at and isinstance(probability, int | float):
            p = max(0.0, min(1.0, float(probability)))
            height = max(2, round(BAR_HEIGHT * p))
            bars.append(Bar(at[commit], BAR_TOP + BAR_HEIGHT - height, height,
                            f"{p * 100:.0f}%"))
    return tuple(bars)
