"""The task spec: frozen dataclasses, parsed and validated once, errors naming the field."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from common.errors import ValidationError
from consumer.engine.verdicts import DifferentErrorPolicy, Verdict


class FlakyMode(StrEnum):
    """Which search. ``auto`` and ``on`` are the same default search (it finds out from the
    runs whether the test is flaky); ``off`` is git's search, one run a commit."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"  # deterministic only: no retests, contradictions end ambiguous

DEFAULT_MAX_GOOD_SEARCH = 1000
# The default search stops far earlier on most tests: a deterministic one needs at most
# log2(N) + 7 runs (adaptive.deterministic_run_bound), and "cannot tell" comes as soon as
# the runs show the target is out of reach. The budget is what a 20-point rise takes. On
# 1,000 commits, p = 0.5 against q = 0.3 with 25 % unrelated errors was named in 38 % of
# the bisections at 800 runs (the rest `undecided`), 92.5 % at 2,000 (400 trials) and
# 97.75 % at 3,000 (mean 1,060 runs, p95 about 2,000-2,250): only the bisections the budget
# cut short run longer, and no wrong answer is added (BENCHMARKS.md, calibration grid). A
# site sets its own per tester (`run_budget` in BISECT_TESTERS: consumer/profiles.py); the
# task timeout bounds the time all the same.
DEFAULT_RUN_BUDGET = 3000
DEFAULT_DETERMINISTIC_RUN_BUDGET = 60  # limits.flaky = false: git's search
# Usable runs of the bad commit without the error before "not reproduced": an error shown in
# 30 % of runs stays hidden that long 0.7^15 < 0.5 % of the time, one shown in 10 % 21 %
# of the time (raise it for a rarer error: each run is a job on the site's CI).
DEFAULT_REPRODUCE_RUNS = 15
MAX_REPRODUCE_RUNS = 500
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SLOTS = 1
MAX_SLOTS = 64
CACHE_DIR_ENV = "BISECT_ENGINE_CACHE_DIR"


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bisect-task" / "mirrors"


@dataclass(frozen=True)
class Limits:
    max_good_search: int = DEFAULT_MAX_GOOD_SEARCH
    run_budget: int = DEFAULT_RUN_BUDGET
    confidence: float = DEFAULT_CONFIDENCE
    slots: int = DEFAULT_SLOTS
    different_error: DifferentErrorPolicy = DifferentErrorPolicy.SKIP
    # Fresh runs on both sides of the boundary ("retest", from before every verification
    # retested, is accepted as true)
    verify: bool = True
    head_check: bool | str = False  # True: the spec's head_commit; a string: that revision
    retest_flaky: bool = False
    flaky: FlakyMode = FlakyMode.AUTO
    # Seconds the bisection may take (None: no limit). No test starts that would likely
    # end after it, and the answer then says what the runs so far can (``undecided`` with
    # the likely candidates) instead of being killed with nothing to show.
    time_budget_s: float | None = None
    reproduce_runs: int = DEFAULT_REPRODUCE_RUNS  # the bad commit's check (default search)


@dataclass(frozen=True)
class KnownVerdict:
    commit: str
    verdict: Verdict
    runs: int = 1
    bad_runs: int = 0
    job_id: str | None = None


@dataclass(frozen=True)
class TaskSpec:
    repo_url: str
    bad_commit: str
    tester: Mapping[str, Any]
    good_commit: str | None = None
    error_id: str | None = None
    limits: Limits = field(default_factory=Limits)
    known_verdicts: tuple[KnownVerdict, ...] = ()
    cache_dir: Path = field(default_factory=default_cache_dir)
    work_dir: Path | None = None
    task_id: int | None = None
    bad_job_id: str | None = None  # the CI job that showed the error (remote testers rerun it)
    head_commit: str | None = None  # the branch head, for limits.head_check = true
    db_url: str | None = None  # the jobs table's database (compass tester)
    scheduler_url: str | None = None  # compass-ci's scheduler (compass tester)
    fresh_runs: bool = False  # ignore known_verdicts: every verdict comes from a new run

    @property
    def head_revision(self) -> str | None:
        """The revision the head check tests, or None when there is no head check."""
        check = self.limits.head_check
        if isinstance(check, str):
            return check
        return self.head_commit if check else None

    @property
    def resolved_work_dir(self) -> Path:
        return self.work_dir if self.work_dir is not None else self.cache_dir.parent / "work"


def load_spec(text: str) -> TaskSpec:
    """Parse a JSON spec; :class:`ValidationError` (``field`` ``spec``) when it is not JSON."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError("spec", f"not valid JSON: {exc}") from exc
    return parse_spec(data)


def parse_spec(data: Any) -> TaskSpec:
    if not isinstance(data, dict):
        raise ValidationError("spec", "must be a JSON object")
    tester = data.get("tester")
    if not isinstance(tester, dict) or not isinstance(tester.get("kind"), str):
        raise ValidationError("tester", 'must be an object with a "kind"')
    task_id = data.get("task_id")
    if task_id is not None and (isinstance(task_id, bool) or not isinstance(task_id, int)):
        raise ValidationError("task_id", "must be an integer")
    work_dir = _opt_str(data, "work_dir")
    cache_dir = _opt_str(data, "cache_dir")
    limits = _limits(data.get("limits") or {})
    head_commit = _opt_str(data, "head_commit")
    if limits.head_check is True and head_commit is None:
        raise ValidationError("head_commit", "is required when limits.head_check is true")
    return TaskSpec(
        repo_url=_str(data, "repo_url"),
        bad_commit=_str(data, "bad_commit"),
        good_commit=_opt_str(data, "good_commit"),
        error_id=_opt_str(data, "error_id"),
        tester=tester,
        limits=limits,
        known_verdicts=_known(data.get("known_verdicts") or []),
        cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(),
        work_dir=Path(work_dir) if work_dir else None,
        task_id=task_id,
        bad_job_id=str(data["bad_job_id"]) if data.get("bad_job_id") is not None else None,
        head_commit=head_commit,
        db_url=_opt_str(data, "db_url"),
        scheduler_url=_opt_str(data, "scheduler_url"),
        fresh_runs=_bool(data, "fresh_runs"),
    )


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValidationError(key, "must be true or false")
    return value


def _str(data: Mapping[str, Any], key: str, prefix: str = "") -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(prefix + key, "is required and must be a non-empty string")
    return value.strip()


def _opt_str(data: Mapping[str, Any], key: str, prefix: str = "") -> str | None:
    if data.get(key) is None or data.get(key) == "":
        return None
    return _str(data, key, prefix)


def _int(data: Mapping[str, Any], key: str, default: int, low: int, high: int | None = None) -> int:
    value = data.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
        high is not None and value > high
    ):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValidationError(f"limits.{key}", f"must be an integer {bound}")
    return value


def _limits(data: Any) -> Limits:
    if not isinstance(data, dict):
        raise ValidationError("limits", "must be an object")
    confidence = data.get("confidence", DEFAULT_CONFIDENCE)
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not (
        0 < confidence <= 1
    ):
        raise ValidationError("limits.confidence", "must be a number in (0, 1]")
    try:
        different = DifferentErrorPolicy(data.get("different_error") or "skip")
    except ValueError as exc:
        raise ValidationError("limits.different_error", 'must be "skip" or "good"') from exc
    verify = data.get("verify", True)
    if verify not in (True, False, "retest"):
        raise ValidationError("limits.verify", 'must be true, false or "retest"')
    head_check = data.get("head_check", False)
    if isinstance(head_check, str):
        head_check = head_check.strip() or False
    elif head_check is None:
        head_check = False
    elif not isinstance(head_check, bool):
        raise ValidationError("limits.head_check", "must be true, false or a revision")
    flaky_raw = data.get("flaky", "auto")
    if flaky_raw is True or flaky_raw is False or flaky_raw is None:
        flaky = {True: FlakyMode.ON, False: FlakyMode.OFF, None: FlakyMode.AUTO}[flaky_raw]
    else:
        try:
            flaky = FlakyMode(str(flaky_raw))
        except ValueError as exc:
            raise ValidationError("limits.flaky", 'must be true, false or "auto"') from exc
    run_budget = _int(data, "run_budget", DEFAULT_DETERMINISTIC_RUN_BUDGET
                      if flaky is FlakyMode.OFF else DEFAULT_RUN_BUDGET, 1)
    time_budget = data.get("time_budget_s")
    if time_budget is not None and (isinstance(time_budget, bool) or not isinstance(
            time_budget, int | float) or not 0 < time_budget < float("inf")):
        raise ValidationError("limits.time_budget_s", "must be a number of seconds > 0")
    return Limits(
        max_good_search=_int(data, "max_good_search", DEFAULT_MAX_GOOD_SEARCH, 1),
        run_budget=run_budget,
        confidence=float(confidence),
        slots=_int(data, "slots", DEFAULT_SLOTS, 1, MAX_SLOTS),
        different_error=different,
        verify=bool(verify),
        head_check=head_check,
        retest_flaky=bool(data.get("retest_flaky", False)),
        flaky=flaky,
        time_budget_s=float(time_budget) if time_budget is not None else None,
        reproduce_runs=_int(data, "reproduce_runs", DEFAULT_REPRODUCE_RUNS, 1,
                            MAX_REPRODUCE_RUNS),
    )


def _known(data: Any) -> tuple[KnownVerdict, ...]:
    if not isinstance(data, list):
        raise ValidationError("known_verdicts", "must be a list")
    known: list[KnownVerdict] = []
    for i, item in enumerate(data):
        where = f"known_verdicts[{i}]."
        if not isinstance(item, dict):
            raise ValidationError(f"known_verdicts[{i}]", "must be an object")
        try:
            verdict = Verdict(str(item.get("verdict")))
        except ValueError as exc:
            raise ValidationError(where + "verdict", 'must be "good", "bad" or "skip"') from exc
        runs = item.get("runs", 1)
        bad_runs: Any = item.get("bad_runs")
        if bad_runs is None:
            bad_runs = runs if verdict is Verdict.BAD else 0
        counts = (runs, bad_runs)
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
            raise ValidationError(where + "runs", "runs and bad_runs must be integers >= 0")
        job_id = item.get("job_id")
        known.append(
            KnownVerdict(
                commit=_str(item, "commit", where).lower(),
                verdict=verdict,
                runs=int(runs),
                bad_runs=int(bad_runs),
                job_id=str(job_id) if job_id is not None else None,
            )
        )
    return tuple(known)
