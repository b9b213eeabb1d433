"""Spec mode: ``python -m consumer.engine --spec -|PATH``; JSON-line events on stdout.

Exit codes: 0 found, 1 no single result, 2 error (bad spec included).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from common.errors import ValidationError
from common.logging import configure_logging
from consumer.engine.events import JsonLinesEmitter
from consumer.engine.lifeline import read_spec_line, stop_on_eof
from consumer.engine.result import ExitCode, error_result
from consumer.engine.session import run_engine
from consumer.engine.spec import load_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m consumer.engine",
        description="Run one bisection from a JSON task spec; events as JSON lines on stdout.",
    )
    parser.add_argument("--spec", required=True, metavar="PATH",
                        help="the task spec file, or - for stdin")
    parser.add_argument("--stop-on-eof", action="store_true",
                        help="with --spec -: read the spec as one line and stop (as on "
                             "SIGTERM) when stdin reaches end-of-file, i.e. when the process "
                             "that started the engine dies (what the consumer asks for)")
    args = parser.parse_args(argv)
    configure_logging("engine")
    emit = JsonLinesEmitter(sys.stdout)
    try:
        if args.spec == "-" and args.stop_on_eof:
            # One line; the consumer keeps the pipe open while it lives (lifeline).
            text = read_spec_line(sys.stdin.buffer)
        elif args.spec == "-":
            text = sys.stdin.read()
        else:
            with open(args.spec, encoding="utf-8") as handle:
                text = handle.read()
        spec = load_spec(text)
        if args.spec == "-" and args.stop_on_eof:
            stop_on_eof(sys.stdin.buffer)
    except (OSError, ValidationError) as exc:
        message = f"invalid {exc.field}: {exc.reason}" if isinstance(exc, ValidationError) else (
            f"cannot read spec: {exc}")
        print(f"bisect engine: {message}", file=sys.stderr)
        emit(error_result(message).to_event())
        return ExitCode.ERROR
    result = asyncio.run(run_engine(spec, emit))
    return int(result.exit_code)


if __name__ == "__main__":
    sys.exit(main())
