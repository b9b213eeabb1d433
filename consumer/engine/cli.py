"""``bisect-run``: the human command line, like ``git bisect run`` but better.

    bisect-run --repo PATH --bad REV [--good REV] [--error-id ID] [--json] -- TEST COMMAND...

The test command runs in a fresh worktree at each commit (cwd = worktree). With
``--error-id`` it is bad when its output shows that id, good when it exits 0 without it, and
skipped on exit 125; without it exit codes decide as in ``git bisect run``.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any, TextIO

from common.errors import ValidationError
from common.logging import configure_logging
from consumer.engine.events import JsonLinesEmitter
from consumer.engine.output import DEFAULT_ERRID_REGEX
from consumer.engine.session import run_engine
from consumer.engine.spec import default_cache_dir, parse_spec


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
    parser.add_argument("--run-budget", type=int, default=60, metavar="N")
    parser.add_argument("--slots", type=int, default=1, metavar="N", help="tests run at once")
    parser.add_argument("--no-verify", action="store_true", help="skip the boundary check")
    parser.add_argument("--cache-dir", type=Path, metavar="D", help="bare-mirror cache")
    parser.add_argument("--work-dir", type=Path, metavar="D", help="where worktrees go")
    parser.add_argument("--json", action="store_true", help="JSON-line events, result last")
    return parser


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Options before ``--``, the test command after it."""
    parser = build_parser()
    if "--" not in argv:
        parser.error("missing '-- TEST COMMAND...' (the test to run at each commit)")
    cut = argv.index("--")
    args = parser.parse_args(argv[:cut])
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
    return {
        "repo_url": args.repo,
        "bad_commit": _local_rev(args.repo, args.bad),
        "good_commit": _local_rev(args.repo, args.good),
        "error_id": args.error_id,
        "tester": {
            "kind": "command",
            "name": "bisect-run",
            "command": command,
            "timeout": args.timeout,
            "errid_regex": args.errid_regex,
        },
        "limits": {
            "max_good_search": args.max_good_search,
            "run_budget": args.run_budget,
            "slots": args.slots,
            "different_error": args.different_error,
            "verify": not args.no_verify,
        },
        "cache_dir": str(args.cache_dir or default_cache_dir()),
        "work_dir": str(args.work_dir) if args.work_dir else None,
    }


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
            check = event["verification"]
            if check:
                held = "held" if check["held"] else "FAILED"
                self._say(f"verification {held}: {check['detail']}")
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
    emit = JsonLinesEmitter(sys.stdout) if args.json else HumanPrinter(sys.stdout)
    result = asyncio.run(run_engine(spec, emit))
    return int(result.exit_code)


if __name__ == "__main__":
    sys.exit(main())
