"""For a flaky (Bayesian / adaptive) search: the culprit probabilities after each step
(``Step.posterior``), as thin rows under the bisection strip, so a reader sees the mass
converge on the culprit. Geometry only; the ``picture`` macro draws it into the strip's SVG.

Positions: a commit of a posterior is drawn at its point on the strip (the strip's history
order). A commit the strip does not show (never tested, or the engine's ``<good side>``
hypothesis) has no known place in history: it is omitted from the row, and the row's total
on such commits is written at its right end ("elsewhere"), so no mass disappears silently.
Steps of a deterministic search have no posterior, and draw no rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.models import Step
from producer.bisection_picture import Picture

MAX_ROWS = 16  # beyond this, every k-th step (and always the last) gets a row
ROW_HEIGHT = 20
CELL_HEIGHT = 17
CELL_WIDTH = 24  # under a strip point (points are 64 apart)
HEADER = 22  # the caption above the rows
GAP = 6  # between the strip's part and the caption


@dataclass(frozen=True)
class Cell:
    x: int  # the left edge
    commit: str
    probability: float
    opacity: float
    label: str  # the percentage written in the cell when there is room for it, else ""

    @property
    def dark(self) -> bool:
        """White text reads on the cell (else dark text)."""
        return self.opacity >= 0.6

    @property
    def percent(self) -> str:
        return _percent(self.probability)


@dataclass(frozen=True)
class Row:
    step_number: int  # the step's number in the timeline (from 1)
    phase: str
    y: int  # the top edge
    cells: tuple[Cell, ...]
    elsewhere: float  # the probability on commits the strip does not show
    elsewhere_count: int

    @property
    def elsewhere_text(self) -> str:
        return f"+{_percent(self.elsewhere)}" if self.elsewhere > 0 else ""


@dataclass(frozen=True)
class PosteriorRows:
    rows: tuple[Row, ...]
    top: int  # where the caption starts
    height: int  # what the rows add to the picture's height
    every: int  # 1: a row per step; k: a row per k-th step
    total_steps: int  # steps that recorded a posterior
    likeliest: str | None = None  # the newest row's most likely commit on the strip

    @property
    def caption_y(self) -> int:
        return self.top + HEADER - 8

    @property
    def cell_width(self) -> int:
        return CELL_WIDTH

    @property
    def cell_height(self) -> int:
        return CELL_HEIGHT

    @property
    def text_dy(self) -> int:
        """From a row's top to its text's baseline (centred in the cell)."""
        return CELL_HEIGHT - 5


def _percent(probability: float) -> str:
    value = probability * 100
    if 0 < value < 1:
        return "<1%"
    return f"{value:.0f}%"


def _opacity(probability: float) -> float:
    """Colour intensity: the square root lifts the small probabilities of the first steps
    (mass spread over many commits) into sight; zero stays blank."""
    if probability <= 0:
        return 0.0
    return round(0.08 + 0.92 * math.sqrt(min(1.0, probability)), 3)


def _chosen(numbered: list[tuple[int, Step]]) -> tuple[list[tuple[int, Step]], int]:
    if len(numbered) <= MAX_ROWS:
        return numbered, 1
    every = math.ceil(len(numbered) / MAX_ROWS)
    chosen = numbered[every - 1::every]
    if chosen[-1] is not numbered[-1]:
        chosen.append(numbered[-1])
    return chosen, every


def build(picture: Picture, steps: list[Step], phases: list[str]) -> PosteriorRows:
    """The rows of the steps that recorded a posterior; ``phases``: each step's phase in
    words, aligned with ``steps``."""
    top = picture.height + GAP
    numbered = [(number, step) for number, step in enumerate(steps, start=1) if step.posterior]
    if not numbered:
        return PosteriorRows((), top, 0, 1, 0)
    chosen, every = _chosen(numbered)
    at = {p.commit: p.x for p in picture.points}
    if picture.known_bad:
        at[picture.known_bad] = picture.known_bad_x
    rows = []
    for index, (number, step) in enumerate(chosen):
        probabilities: dict[str, float] = {}
        for commit, probability in step.posterior:
            probabilities[commit] = probabilities.get(commit, 0.0) + max(0.0, probability)
        shown = {c: p for c, p in probabilities.items() if c in at}
        hidden = [p for c, p in probabilities.items() if c not in at]
        cells = tuple(
            Cell(x=at[commit] - CELL_WIDTH // 2, commit=commit, probability=p,
                 opacity=_opacity(p), label=_percent(p).rstrip("%") if p >= 0.1 else "")
            for commit, p in sorted(shown.items(), key=lambda cp: at[cp[0]]))
        rows.append(Row(step_number=number, phase=phases[number - 1],
                        y=top + HEADER + index * ROW_HEIGHT, cells=cells,
                        elsewhere=sum(hidden), elsewhere_count=len(hidden)))
    height = GAP + HEADER + len(rows) * ROW_HEIGHT + 8
    return PosteriorRows(tuple(rows), top, height, every, len(numbered),
                         _likeliest(rows[-1]))


def _likeliest(row: Row) -> str | None:
    """The commit the newest row gives most probability (a phone scrolls the strip to it
    while there is no culprit yet)."""
    best = max(row.cells, key=lambda cell: cell.probability, default=None)
    return best.commit if best is not None and best.probability > 0 else None
