"""``bisect-cli``: the producer's HTTP API from a terminal.

Human tables by default, ``--json`` for scripts. Exit codes: 0 done, 1 the API refused (its
``error``/``field`` on stderr), 2 usage, 3 producer unreachable, 4 ``watch`` saw the task end
other than completed."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from producer.report import format_duration, format_time, run_seconds, short

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 30.0
EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_COMPLETED = 1, 2, 3, 4
FINAL = ("completed", "failed", "cancelled")


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Api:
    """A small synchronous client: JSON in and out, one exception type for every failure."""

    def __init__(self, base_url: str, token: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, *, query: dict[str, str] | None = None,
             body: Any = None, raw: bool = False) -> Any:
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v})
        headers = {"Accept": "text/plain" if raw else "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
                payload = answer.read()
        except urllib.error.HTTPError as exc:
            raise CliError(_refusal(exc), EXIT_REFUSED) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(f"cannot reach the producer at {self.base_url}: {reason}",
                           EXIT_UNREACHABLE) from None
        if raw:
            return payload.decode("utf-8", errors="replace")
        try:
            return json.loads(payload)
        except ValueError:
            raise CliError(f"{method} {path}: the producer answered something other than JSON",
                           EXIT_REFUSED) from None


def _refusal(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
    except (ValueError, OSError):
        body = None
    if isinstance(body, dict) and "error" in body:
        field = f" (field: {body['field']})" if body.get("field") else ""
        return f"refused (HTTP {exc.code}): {body['error']}{field}"
    return f"refused (HTTP {exc.code}): {exc.reason}"


# ---------------------------------------------------------------- output
def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows,
                                                                        strict=False)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
             .rstrip() for row in (headers, *rows)]
    return "\n".join(lines)


def _cut(text: str | None, width: int = 48) -> str:
    text = text or "-"
    return text if len(text) <= width else text[:width - 1] + "…"


def _step_of(task: dict[str, Any]) -> str:
    """Progress in steps (never candidates): ``5 of ~9`` while running, ``9`` once done."""
    done, estimate = int(task.get("current_step") or 0), int(task.get("steps_estimate") or 0)
    if not done:
        return "-"
    if task.get("status") in FINAL or estimate <= done:
        return str(done)
    return f"{done} of ~{estimate}"


def _run_time(task: dict[str, Any]) -> str:
    return format_duration(run_seconds(task.get("start_time"), task.get("end_time")))


def _task_rows(tasks: list[dict[str, Any]]) -> str:
    rows = [(t["id"], t["status"], str(t.get("priority", 0)), t.get("suite") or "-",
             _cut(t.get("error_id")), _step_of(t), format_time(t.get("start_time")),
             _run_time(t), (t.get("group_key") or "-")[:8]) for t in tasks]
    return _table(("ID", "STATUS", "PRI", "SUITE", "ERROR ID", "STEP", "STARTED", "RUN TIME",
                   "GROUP"), rows)


def _step_line(number: int, step: dict[str, Any]) -> str:
    runs = f"runs {step.get('runs', 1)}"
    if step.get("bad_runs"):
        runs += f" ({step['bad_runs']} bad)"
    parts = [f"step {number}: {short(step.get('commit'))} {step.get('verdict', '?'):<4}", runs]
    if step.get("job_id"):
        parts.append(f"job {step['job_id']}")
    if step.get("duration_ms"):
        parts.append(format_duration(step["duration_ms"] / 1000))
    return ", ".join(parts)


def _status(task: dict[str, Any]) -> str:
    """The stored status; a cancel (stored as failed, compass-ci's way) says so."""
    if task.get("status") == "failed" and task.get("end_reason") == "cancelled":
        return "cancelled"
    return str(task.get("status"))


def _good_end(task: dict[str, Any], steps: list[dict[str, Any]]) -> str | None:
    """The good commit given, or the first one the engine found."""
    given = task.get("good_commit")
    if given:
        return str(given)
    return next((str(s["commit"]) for s in steps if s.get("verdict") == "good"), None)


def _show(data: dict[str, Any]) -> str:
    task, steps = data["task"], data.get("steps", [])
    result = (task.get("extra") or {}).get("result") or {}
    fields = [("id", task["id"]), ("name", task.get("name")), ("status", task["status"]),
              ("error id", task.get("error_id")), ("bad job", task.get("bad_job_id")),
              ("suite", task.get("suite")), ("repository", task.get("git_url")),
              ("range", f"{_good_end(task, steps) or '(good commit not found yet)'}.."
                        f"{task.get('known_bad_commit') or '-'}"),
              ("priority", task.get("priority")), ("step", _step_of(task)),
              ("started", format_time(task.get("start_time"))), ("run time", _run_time(task)),
              ("group", task.get("group_key")), ("last error", task.get("last_error"))]
    if task["status"] == "completed":
        subject = f' ("{result["subject"]}")' if result.get("subject") else ""
        confidence = task.get("confidence")
        fields += [("first bad", f"{task.get('bad_commit')}{subject}"),
                   ("confidence", f"{confidence * 100:.1f}%" if confidence else "-"),
                   ("verification", task.get("verification"))]
    lines = [f"{name + ':':<13} {value}" for name, value in fields if value not in (None, "")]
    lines.append("")
    if steps:
        rows = [(str(n), short(s.get("commit")), s.get("verdict", "?"),
                 str(s.get("runs", 1)) + (f" ({s['bad_runs']} bad)" if s.get("bad_runs") else ""),
                 s.get("job_id") or "-",
                 format_duration(s["duration_ms"] / 1000) if s.get("duration_ms") else "-",
                 _cut(s.get("detail"), 60)) for n, s in enumerate(steps, 1)]
        lines.append(_table(("#", "COMMIT", "VERDICT", "RUNS", "JOB", "DURATION", "DETAIL"),
                            rows))
    else:
        lines.append("no commit tested yet")
    return "\n".join(lines)


# Control characters (terminal escape sequences) in job ids or log lines from outside.
_CONTROLS = {n: "?" for n in [*range(0, 9), *range(11, 32), *range(127, 160)]}


def say(text: str) -> None:
    print(text.translate(_CONTROLS), flush=True)


def _emit(args: argparse.Namespace, data: Any, human: Callable[[Any], str]) -> None:
    say(json.dumps(data, ensure_ascii=False, indent=2) if args.json else human(data))


# ---------------------------------------------------------------- commands
# A submit option and the task field it sets: what an existing task may differ in.
_SUBMIT_FIELDS = {"priority": "priority", "timeout": "timeout", "tester": "tester",
                  "repo_url": "git_url", "bad_commit": "known_bad_commit",
                  "good": "good_commit"}


def _ignored(task: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """The options of this submit that the existing task does not have."""
    def same(option: str, value: Any) -> bool:
        held = str(task.get(_SUBMIT_FIELDS[option]) or "")
        if option == "repo_url":
            return held.rstrip("/").removesuffix(".git") == str(value).rstrip(
                "/").removesuffix(".git")
        if option in ("bad_commit", "good"):  # an abbreviated hash names the same commit
            return bool(held) and held.startswith(str(value))
        return held == str(value)
    return ["--" + option.replace("_", "-") for option, value in given.items()
            if not same(option, value)]


def _submit_text(data: dict[str, Any], given: dict[str, Any]) -> str:
    task = data["task"]
    if data["created"]:
        return f"created task {task['id']} (status {task['status']})"
    text = (f"task {task['id']} exists already for job {task.get('bad_job_id')} and error id "
            f"{task.get('error_id')} (status {_status(task)}): no new task")
    ignored = _ignored(task, given)
    if ignored:
        text += (f"; the options of this submit ({', '.join(ignored)}) were ignored: the "
                 "existing task keeps its own")
    return text


def cmd_submit(api: Api, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"bad_job_id": args.bad_job_id, "error_id": args.error_id}
    given = {key: getattr(args, key) for key in _SUBMIT_FIELDS if getattr(args, key) is not None}
    for key, value in given.items():
        body["good_commit" if key == "good" else key] = value
    data = api.call("POST", "/api/v1/tasks", body=body)
    _emit(args, data, lambda d: _submit_text(d, given))
    return 0


def cmd_list(api: Api, args: argparse.Namespace) -> int:
    query = {"status": args.status, "suite": args.suite, "error_id": args.error_id,
             "group": args.group, "bad_job_id": args.bad_job_id, "limit": str(args.limit)}
    tasks: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = api.call("GET", "/api/v1/tasks", query={**query, "cursor": cursor or ""})
        tasks.extend(page["tasks"])
        cursor = page.get("next_cursor")
        if not args.all or not cursor:
            break
    def human(data: dict[str, Any]) -> str:
        if not data["tasks"]:
            return "no tasks"
        more = "\n(more tasks: use --all or a larger --limit)" if cursor else ""
        return _task_rows(data["tasks"]) + more

    _emit(args, {"tasks": tasks, "next_cursor": cursor}, human)
    return 0


def cmd_show(api: Api, args: argparse.Namespace) -> int:
    _emit(args, api.call("GET", f"/api/v1/tasks/{args.id}"), _show)
    return 0


def cmd_watch(api: Api, args: argparse.Namespace) -> int:
    seen = 0
    last: tuple[str, str] | None = None
    while True:
        data = api.call("GET", f"/api/v1/tasks/{args.id}")
        task, steps = data["task"], data.get("steps", [])
        for number, step in enumerate(steps[seen:], seen + 1):
            say(json.dumps({"step": number, **step}) if args.json else _step_line(number, step))
        seen = max(seen, len(steps))
        state = (task["status"], _step_of(task))
        if state != last and task["status"] not in FINAL:
            say(json.dumps({"status": task["status"], "progress": state[1]}) if args.json
                else f"{task['status']}: step {state[1]}")
        last = state
        if task["status"] in FINAL:
            break
        time.sleep(args.interval)
    if args.json:
        say(json.dumps({"task": task}, ensure_ascii=False))
    elif task["status"] == "completed":
        subject = ((task.get("extra") or {}).get("result") or {}).get("subject")
        say(f"completed: first bad commit {task.get('bad_commit')}"
            + (f' ("{subject}")' if subject else ""))
    else:
        say(f"{_status(task)}: {task.get('last_error') or 'no reason given'}")
    return 0 if task["status"] == "completed" else EXIT_NOT_COMPLETED


def _action(verb: str) -> Callable[[Api, argparse.Namespace], int]:
    def run(api: Api, args: argparse.Namespace) -> int:
        body = {"fresh": True} if getattr(args, "fresh", False) else None
        data = api.call("POST", f"/api/v1/tasks/{args.id}/{verb}", body=body)
        task = data["task"]
        note = " (cancel requested: the consumer stops it)" if task.get("cancel_requested") \
            and task["status"] == "processing" else ""
        _emit(args, data, lambda _: f"task {task['id']}: {_status(task)}{note}")
        return 0
    return run


def cmd_forget_verdicts(api: Api, args: argparse.Namespace) -> int:
    data = api.call("DELETE", "/api/v1/verdicts",
                    query={"repo_url": args.repo_url, "error_id": args.error_id})
    _emit(args, data, lambda d: f"forgot {d['forgotten']} stored verdicts of {args.error_id} "
                                f"in {args.repo_url}")
    return 0


def cmd_report(api: Api, args: argparse.Namespace) -> int:
    text = api.call("GET", f"/api/v1/tasks/{args.id}/report", raw=True)
    _emit(args, {"id": args.id, "report": text}, lambda d: str(d["report"]).rstrip("\n"))
    return 0


def cmd_counts(api: Api, args: argparse.Namespace) -> int:
    data = api.call("GET", "/api/v1/tasks/counts")
    _emit(args, data, lambda d: _table(("STATUS", "TASKS"), [
        *[(k, str(v)) for k, v in d["counts"].items()], ("total", str(d["total"]))]))
    return 0


# ---------------------------------------------------------------- arguments
def _task_id(value: str) -> str:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a task id")
    return value


def build_parser() -> argparse.ArgumentParser:
    # The common options are accepted before or after the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS,
                        help=f"producer URL (BISECT_PRODUCER_URL, default {DEFAULT_URL})")
    common.add_argument("--token-file", default=argparse.SUPPRESS, metavar="PATH",
                        help="file holding the API token (default: BISECT_API_TOKEN)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON for scripts")
    parser = argparse.ArgumentParser(prog="bisect-cli", parents=[common],
                                     description="Talk to the bisect-task producer.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, run: Callable[[Api, argparse.Namespace], int], text: str
            ) -> argparse.ArgumentParser:
        command = sub.add_parser(name, parents=[common], help=text, description=text)
        command.set_defaults(run=run)
        return command

    submit = add("submit", cmd_submit, "submit a bisection task (an existing task of the "
                                       "same job and error id is answered instead)")
    submit.add_argument("bad_job_id", help="the failed job: a compass-ci job id, or any id "
                                           "with --repo-url and --bad-commit")
    submit.add_argument("error_id", help="the error id to bisect, e.g. "
                                         "last_state.test.pkgbuild.exit_code.1")
    submit.add_argument("--priority", type=int, help="higher runs first (default 0)")
    submit.add_argument("--good", metavar="REV",
                        help="a commit known good (default: the engine searches for one)")
    submit.add_argument("--tester", metavar="PROFILE",
                        help="the consumers' tester profile to test with (default: the "
                             "producer's BISECT_DEFAULT_TESTER)")
    submit.add_argument("--timeout", type=int, metavar="S",
                        help="seconds the whole bisection may take")
    submit.add_argument("--repo-url", metavar="URL",
                        help="the repository, for a job outside compass-ci (must be allowed "
                             "by the producer's BISECT_REPO_URL_ALLOW)")
    submit.add_argument("--bad-commit", metavar="REV",
                        help="the commit that shows the error, for a job outside compass-ci")
    listing = add("list", cmd_list, "list tasks, newest first")
    listing.add_argument("--status", help="only this status (wait, processing, completed, "
                                          "failed, or any status stored)")
    listing.add_argument("--suite", help="only this compass-ci suite")
    listing.add_argument("--error-id", help="only this error id")
    listing.add_argument("--group", help="only this group (same error id and repository)")
    listing.add_argument("--bad-job-id", help="only the tasks of this job")
    listing.add_argument("--limit", type=int, default=50,
                         help="tasks a page (default 50, at most 1000)")
    listing.add_argument("--all", action="store_true", help="follow every page")
    for name, run, text in (("show", cmd_show, "one task with its steps"),
                            ("retry", _action("retry"), "put a failed/cancelled task back"),
                            ("cancel", _action("cancel"), "cancel a task"),
                            ("report", cmd_report, "the report of a completed task")):
        command = add(name, run, text)
        command.add_argument("id", type=_task_id, help="the task id")
        if name == "retry":
            command.add_argument("--fresh", action="store_true",
                                 help="reuse no stored verdict: test every commit again")
    forget = add("forget-verdicts", cmd_forget_verdicts,
                 "forget the stored verdicts of a repository and error id (the next bisection "
                 "tests every commit again)")
    forget.add_argument("repo_url", help="the repository URL, as the tasks name it")
    forget.add_argument("error_id", help="the error id")
    watch = add("watch", cmd_watch, "follow a task live until it finishes")
    watch.add_argument("id", type=_task_id, help="the task id")
    watch.add_argument("--interval", type=float, default=2.0, metavar="S",
                       help="seconds between polls (default 2)")
    add("counts", cmd_counts, "task counts by status")
    return parser


def _token(args: argparse.Namespace) -> str | None:
    path = getattr(args, "token_file", None)
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read().strip() or None
        except OSError as exc:
            raise CliError(f"cannot read --token-file {path}: {exc.strerror}", EXIT_USAGE) \
                from None
    return os.environ.get("BISECT_API_TOKEN") or None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    url = getattr(args, "url", None) or os.environ.get("BISECT_PRODUCER_URL") or DEFAULT_URL
    try:
        if not url.startswith(("http://", "https://")):
            raise CliError(f"--url {url!r} must start with http:// or https://", EXIT_USAGE)
        return int(args.run(Api(url, _token(args)), args))
    except CliError as exc:
        print(f"bisect-cli: {str(exc).translate(_CONTROLS)}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `bisect-cli list | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
