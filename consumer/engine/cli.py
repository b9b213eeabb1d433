"""``bisect-run``: the human command line, like ``git bisect run`` but better.

    bisect-run --repo PATH --bad REV [--good REV] [--error-id ID] [--json] -- TEST COMMAND...

The test command runs in a fresh worktree at each commit (cwd = worktree). With
``--error-id`` it is bad when its output shows that id, good when it exits 0 without it, and
skipped on exit 125; without it exit codes decide as in ``git bisect run``.

The default search works for deterministic and flaky tests alike: it retests where the
runs disagree, estimates how often the error shows before and after the first bad commit,
verifies the boundary with fresh runs and reports a confidence (``--confidence`` is the
target); ``--no-flaky`` is ``git bisect``'s search, one run a commit, for a test known to
be deterministic (its confidence is what those runs tell if it may not be). ``--known-verdicts
FILE`` reuses the verdicts a previous run wrote with ``--emit-verdicts FILE`` (or the
``verdict`` events of ``--json``); ``--fresh-runs`` ignores them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from common.errors import ValidationError
from common.logging import configure_logging
from consumer.engine.events import JsonLinesEmitter
from consumer.engine.output import DEFAULT_ERRID_REGEX
from consumer.engine.session import run_engine
from consumer.engine.spec import (
    DEFAULT_DETERMINISTIC_RUN_BUDGET,
    DEFAULT_REPRODUCE_RUNS,
    DEFAULT_RUN_BUDGET,
    default_cache_dir,
    parse_spec,
)
from consumer.engine.testers import tester_fingerprint

_KNOWN_FIELDS = ("commit", "verdict", "runs", "bad_runs", "job_id")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bisect-run",
        description="Find the commit that broke a test, in worktrees of a cached mirror.",
        epilog="Everything after -- is the test command, run at each commit in its worktree.",
    )
    parser.add_argument("--repo", required=True, help="repository: local path or git URL")
    parser.add_argument("--bad", required=True, metavar="REV", help="a commit that shows the error")
    parser.add_argument("--good", metavar="REV", help="a commit that does not (found when absent)")
    parser.add_argument("--error-id", metavar="ID",
                        help="bad means this id shows in the output (else exit codes decide)")
    parser.add_argument("--errid-regex", metavar="RE", default=DEFAULT_ERRID_REGEX,
                        help="regex whose group 1 is an error id (default: %(default)s)")
    parser.add_argument("--different-error", choices=["skip", "good"], default="skip",
                        help="what a failure with other error ids only counts as")
    parser.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                        help="seconds per test run (a timeout is a skip)")
    parser.add_argument("--max-good-search", type=int, default=1000, metavar="N",
                        help="first-parent commits to step back looking for a good one")
    parser.add_argument("--run-budget", "--max-runs", dest="run_budget", type=int, metavar="N",
                        help=f"most test runs (default {DEFAULT_RUN_BUDGET}; the search stops "
                             f"far earlier unless the test is very flaky; "
                             f"{DEFAULT_DETERMINISTIC_RUN_BUDGET} with --no-flaky)")
    parser.add_argument("--time-budget", type=float, metavar="S",
                        help="seconds the whole bisection may take: no test starts that would "
                             "likely end after it, and the answer says what the runs so far "
                             "can (default: no limit)")
    parser.add_argument("--reproduce-runs", type=int, metavar="N",
                        help=f"runs of the bad commit without the error before 'not "
                             f"reproduced' (default {DEFAULT_REPRODUCE_RUNS}: enough for an "
                             f"error shown in 30 %% of runs or more)")
    parser.add_argument("--slots", type=int, default=1, metavar="N", help="tests run at once")
    flaky = parser.add_mutually_exclusive_group()
    flaky.add_argument("--flaky", dest="flaky", action="store_const", const=True,
                       help="the test is flaky (the default search finds that out itself; "
                            "kept for scripts)")
    flaky.add_argument("--no-flaky", dest="flaky", action="store_const", const=False,
                       help="for a test known to be deterministic: git bisect's search, "
                            "one run a commit and one fresh run each side of the boundary "
                            "(ceil(log2 N) + 3 runs); contradictions end ambiguous, and the "
                            "confidence is what so few runs tell if the test may be flaky "
                            "(about 0.6)")
    parser.add_argument("--confidence", type=float, default=0.95, metavar="P",
                        help="stop when a commit is the culprit with this probability "
                             "(default %(default)s)")
    parser.add_argument("--known-verdicts", type=Path, metavar="FILE",
                        help="verdicts of an earlier run (JSON lines or a JSON list) to reuse")
    parser.add_argument("--fresh-runs", action="store_true",
                        help="ignore --known-verdicts: every verdict from a new run")
    parser.add_argument("--emit-verdicts", nargs="?", const="-", metavar="FILE",
                        help="write each new verdict as a JSON line to FILE (default stdout); "
                             "implied by --json")
    parser.add_argument("--head-check", metavar="REV",
                        help="after the culprit is found, test REV (the branch head): "
                             "regressed or fixed?")
    parser.add_argument("--no-verify", action="store_true", help="skip the boundary check")
    parser.add_argument("--cache-dir", type=Path, metavar="D", help="bare-mirror cache")
    parser.add_argument("--work-dir", type=Path, metavar="D", help="where worktrees go")
    parser.add_argument("--json", action="store_true", help="JSON-line events, result last")
    return parser


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Options before ``--``, the test command after it."""
    parser = build_parser()
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])  # -h / --help print the help here and exit
    if cut == len(argv):
        parser.error("missing '-- TEST COMMAND...' (the test to run at each commit)")
    command = argv[cut + 1:]
    if not command:
        parser.error("the test command after -- is empty")
    return args, command


def _local_rev(repo: str, rev: str | None) -> str | None:
    """Resolve ``rev`` in a local repository, so ``HEAD~3`` means the user's HEAD."""
    if rev is None or (not Path(repo, ".git").exists() and not Path(repo, "HEAD").exists()):
        return rev
    done = subprocess.run(
        ["git", "-C", repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise ValidationError("--bad/--good", f"{rev!r} is not a commit in {repo}")
    return done.stdout.strip()


def spec_from_args(args: argparse.Namespace, command: list[str]) -> dict[str, Any]:
    tester = {
        "kind": "command",
        "name": "bisect-run",
        "command": command,
        "timeout": args.timeout,
        "errid_regex": args.errid_regex,
    }
    limits: dict[str, Any] = {
        "max_good_search": args.max_good_search,
        "slots": args.slots,
        "different_error": args.different_error,
        "verify": not args.no_verify,
        "confidence": args.confidence,
        "flaky": "auto" if args.flaky is None else args.flaky,
    }
    if args.run_budget is not None:
        limits["run_budget"] = args.run_budget
    if args.time_budget is not None:
        limits["time_budget_s"] = args.time_budget
    if args.reproduce_runs is not None:
        limits["reproduce_runs"] = args.reproduce_runs
    if args.head_check:
        limits["head_check"] = _local_rev(args.repo, args.head_check)
    known = (read_known_verdicts(args.known_verdicts, tester_fingerprint(tester), args.error_id)
             if args.known_verdicts else [])
    return {
        "repo_url": args.repo,
        "bad_commit": _local_rev(args.repo, args.bad),
        "good_commit": _local_rev(args.repo, args.good),
        "error_id": args.error_id,
        "tester": tester,
        "limits": limits,
        "known_verdicts": known,
        "cache_dir": str(args.cache_dir or default_cache_dir()),
        "work_dir": str(args.work_dir) if args.work_dir else None,
        "fresh_runs": args.fresh_runs,
    }


def read_known_verdicts(path: Path, fingerprint: str, error_id: str | None
                        ) -> list[dict[str, Any]]:
    """Verdicts from a JSON list or JSON lines (``verdict`` events or plain records).

    Records of another tester fingerprint or error id (when they carry one) are left out:
    a verdict only means something for the same test and the same error.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError("--known-verdicts", f"cannot read {path}: {exc.strerror}") from None
    try:
        stripped = text.strip()
        items = json.loads(stripped) if stripped.startswith("[") else [
            json.loads(line) for line in stripped.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ValidationError("--known-verdicts", f"{path}: not JSON lines or a list: {exc}"
                              ) from None
    known: dict[str, dict[str, Any]] = {}
    for item in items:
        if not isinstance(item, dict) or item.get("event", "verdict") != "verdict":
            continue
        if item.get("tester_fingerprint", fingerprint) != fingerprint:
            continue
        if "error_id" in item and item["error_id"] != error_id:
            continue
        record = {k: item[k] for k in _KNOWN_FIELDS if item.get(k) is not None}
        known[str(item.get("commit"))] = record  # the last (cumulative) record of a commit
    return list(known.values())


def _with_verdicts(emit: Callable[[dict[str, Any]], None], target: str
                   ) -> Callable[[dict[str, Any]], None]:
    """``emit`` plus every ``verdict`` event as a JSON line to ``target`` (``-``: stdout)."""

    def both(event: dict[str, Any]) -> None:
        if event["event"] == "verdict":
            line = json.dumps(event, separators=(",", ":")) + "\n"
            if target == "-":
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                with open(target, "a", encoding="utf-8") as handle:
                    handle.write(line)
        emit(event)

    return both


class HumanPrinter:
    """Readable lines for a terminal instead of JSON events."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.out = stream if stream is not None else sys.stdout

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "range":
            goods = ", ".join(g[:12] for g in event["good"]) or "(none: root reached)"
            self._say(f"range: {event['candidates']} commits after good {goods}"
                      f" up to bad {event['bad'][:12]}")
        elif kind == "testing":
            self._say(f"      {event['phase']:<10} {event['commit'][:12]} testing...")
        elif kind == "step":
            reused = ", known" if event["reused"] else ""
            self._say(f"[{event['seq']:>3}] {event['phase']:<10} {event['commit'][:12]} "
                      f"{event['verdict']:<4} ({event['duration_s']:.2f}s{reused})")
        elif kind == "result":
            self._result(event)

    def _result(self, event: dict[str, Any]) -> None:
        self._say("")
        if event["status"] == "found":
            self._say(f"first bad commit: {event['first_bad_commit']}")
            self._say(f"  subject: {event['subject']}")
            self._say(f"  author:  {event['author']}")
            self._say(f"  date:    {event['date']}")
            self._say(f"confidence: {event['confidence']:.3f}")
            if event.get("runner_up"):
                up = event["runner_up"]
                self._say(f"  runner-up: {up['commit']} ({up['probability']:.3f})")
            if event.get("rates"):
                rates = event["rates"]
                observed = ""
                if rates.get("after_runs") is not None:
                    observed = (f" (it showed in {rates['after_bad']} of {rates['after_runs']}"
                                f" runs from it on, {rates['before_bad']} of "
                                f"{rates['before_runs']} before it)")
                self._say(f"  the error shows in ~{rates['bad']:.0%} of runs from it on, "
                          f"~{rates['good']:.0%} before it{observed}")
            check = event["verification"]
            if check:
                # Not "failed": with a flaky test a parent that shows the error now and then
                # is expected, and the confidence above already weighs those runs.
                held = "held" if check["held"] else "not clean"
                self._say(f"verification {held}: {check['detail']}")
            if event.get("head"):
                head = event["head"]
                self._say(f"head {head['commit'][:12]}: {head['status']} "
                          f"({head['runs']} runs)")
        elif event["status"] == "good_is_bad":
            self._say(f"the good commit is bad too: {event['reason']}")
        elif event["status"] == "undecided":
            self._say(f"undecided: {event['reason']}")
            for commit in event["candidates"][:10]:
                self._say(f"  likely: {commit}")
        else:
            self._say(f"no single first bad commit ({event['status']}): {event['reason']}")
            for commit in event["candidates"]:
                self._say(f"  candidate {commit}")
        self._say(f"test runs: {event['runs']}")

    def _say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, command = parse_args(argv)
    try:
        spec = parse_spec(spec_from_args(args, command))
    except ValidationError as exc:
        build_parser().error(f"{exc.field}: {exc.reason}")
    configure_logging("engine", level=None if args.json else "warning")
    emit: Callable[[dict[str, Any]], None] = (
        JsonLinesEmitter(sys.stdout) if args.json else HumanPrinter(sys.stdout))
    if args.emit_verdicts and not (args.json and args.emit_verdicts == "-"):
        emit = _with_verdicts(emit, args.emit_verdicts)
    result = asyncio.run(run_engine(spec, emit))
    return int(result.exit_code)


if __name__ == "__main__":
    sys.exit(main())
