"""The one class that runs SQL. Every statement comes from ``queries.sql``; every value is a
bound parameter. ``None`` in Python is ``''``/0 in the database (Manticore rejects NULL) and
the conversion happens here only."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

import pymysql

from common import ids
from common.compass_job import MAKEPKG_COMMIT, CompassJob, Source, kv_token
from common.db import Database
from common.errors import SchemaError
from common.models import (
    Culprit,
    EndReason,
    NewTask,
    Regression,
    Step,
    StoredVerdict,
    Task,
    TaskStatus,
    Verdict,
)
from common.queries import load
from common.schema import (
    FOREIGN_TABLES,
    TABLES,
    Table,
    add_column_ddl,
    create_table_ddl,
)
from common.settings import Dialect

PAGE_LIMIT = 1000  # Manticore's default max_matches: never ask for more in one SELECT
# compass-ci's bisect container inserts this task at every start (compass-ci.md §4.3).
LEGACY_TEST_ERRID = "test_errid_123"
COEXISTENCE_WINDOW_S = 24 * 3600


def now_s() -> int:
    return int(time.time())


def now_ms() -> int:
    return int(time.time() * 1000)


def _s(value: str | None) -> str:
    return "" if value is None else value


def _opt_s(value: Any) -> str | None:
    if value is None:
        return None
    text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return text if text != "" else None


def _text(value: Any) -> str:
    return _opt_s(value) or ""


def _opt_i(value: Any) -> int | None:
    number = int(value or 0)
    return number if number != 0 else None


def _i(value: Any) -> int:
    return int(value or 0)


def _json_load(value: Any) -> dict[str, Any]:
    if value is None or value == "" or value == b"":
        return {}
    if isinstance(value, dict):
        return value
    try:
        loaded = json.loads(value)
    except (TypeError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _json_dump(value: dict[str, Any] | None) -> str:
    return json.dumps(value or {}, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def task_from_row(row: dict[str, Any]) -> Task:
    confidence = row.get("confidence")
    return Task(
        id=int(row["id"]),
        bad_job_id=_text(row["bad_job_id"]),
        error_id=_text(row["error_id"]),
        status=TaskStatus(_text(row["bisect_status"]) or "wait"),
        priority=_i(row["priority_level"]),
        git_url=_opt_s(row["git_url"]),
        project=_opt_s(row["project"]),
        suite=_opt_s(row["suite"]),
        name=_opt_s(row["name"]),
        tester=_opt_s(row["tester"]),
        source=_opt_s(row["source"]),
        known_bad_commit=_opt_s(row["known_bad_commit"]),
        good_commit=_opt_s(row["good_commit"]),
        group_key=_opt_s(row["group_key"]),
        timeout=_opt_i(row["timeout"]),
        owner=_opt_s(row["owner"]),
        lease_expires_ms=_opt_i(row["lease_expires_ms"]),
        claims=_i(row["claims"]),
        attempts=_i(row["attempts"]),
        retry_count=_i(row["retry_count"]),
        cancel_requested=bool(_i(row["cancel_requested"])),
        queued_ms=_i(row["queued_ms"]),
        created_at=_i(row["created_at"]),
        updated_at=_i(row["updated_at"]),
        start_time=_opt_i(row["start_time"]),
        end_time=_opt_i(row["end_time"]),
        bad_commit=_opt_s(row["bad_commit"]),
        first_bad_id=_opt_s(row["first_bad_id"]),
        first_result_root=_opt_s(row["first_result_root"]),
        work_dir=_opt_s(row["work_dir"]),
        last_error=_opt_s(row["last_error"]),
        # Manticore's float is 32-bit: round away the noise it adds.
        confidence=round(float(confidence), 4) if confidence else None,
        verification=_opt_s(row["verification"]),
        current_step=_i(row["current_step"]),
        steps_estimate=_i(row["steps_estimate"]),
        candidates_left=_i(row["candidates_left"]),
        progress_ms=_i(row["progress_ms"]),
        end_reason=_text(row["end_reason"]),
        current_commit=_opt_s(row["current_commit"]),
        phase=_opt_s(row["phase"]),
        extra=_json_load(row["j"]),
    )


def task_display_name(new: NewTask) -> str:
    suite = new.suite or new.project or "task"
    return f"{suite}: {new.error_id}"


def new_task_row(task_id: int, new: NewTask, now: int, now_milli: int) -> dict[str, Any]:
    """Every column of a fresh task row (INSERT must give them all: no defaults in Manticore)."""
    git_url = _s(new.git_url)
    return {
        "id": task_id,
        "bad_job_id": new.bad_job_id,
        "error_id": new.error_id,
        "bisect_status": TaskStatus.WAIT.value,
        "project": _s(new.project),
        "git_url": git_url,
        "bad_commit": "",
        "first_bad_id": "",
        "first_result_root": "",
        "work_dir": "",
        "start_time": 0,
        "end_time": 0,
        "priority_level": new.priority,
        "timeout": new.timeout or 0,
        "retry_count": 0,
        "last_error": "",
        "created_at": now,
        "updated_at": now,
        "j": _json_dump(new.extra),
        "error_key": ids.text_key(new.error_id),
        "group_key": ids.group_key(new.error_id, git_url),
        "name": task_display_name(new),
        "suite": _s(new.suite),
        "tester": _s(new.tester),
        "source": new.source,
        "known_bad_commit": _s(new.known_bad_commit),
        "good_commit": _s(new.good_commit),
        "owner": "",
        "lease_expires_ms": 0,
        "claims": 0,
        "attempts": 0,
        "cancel_requested": 0,
        "queued_ms": now_milli,
        "confidence": 0.0,
        "verification": "",
        "current_step": 0,
        "steps_estimate": 0,
        "candidates_left": 0,
        "progress_ms": 0,
        "bisect_metrics": "",
        "end_reason": "",
        "current_commit": "",
        "phase": "",
    }


def step_from_row(row: dict[str, Any]) -> Step:
    return Step(
        task_id=int(row["task_id"]),
        attempt=_i(row["attempt"]),
        seq=_i(row["seq"]),
        commit=_text(row["commit_sha"]),
        verdict=Verdict(_text(row["verdict"]).lower()),
        runs=_i(row["runs"]),
        bad_runs=_i(row["bad_runs"]),
        job_id=_opt_s(row["job_id"]),
        result_root=_opt_s(row["result_root"]),
        reused=bool(_i(row["reused"])),
        detail=_opt_s(row["detail"]),
        started_ms=_i(row["started_ms"]),
        duration_ms=_i(row["duration_ms"]),
        created_at=_i(row["created_at"]),
        phase=_opt_s(row["phase"]),
        posterior=_posterior(row["posterior"]),
    )


MAX_POSTERIOR = 20  # the most likely culprits kept per step


def _posterior(value: Any) -> tuple[tuple[str, float], ...]:
    try:
        loaded = json.loads(_text(value) or "[]")
    except ValueError:
        return ()
    pairs = []
    for item in loaded if isinstance(loaded, list) else []:
        if (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], int | float)):
            pairs.append((item[0], float(item[1])))
    return tuple(pairs[:MAX_POSTERIOR])


def verdict_from_row(row: dict[str, Any]) -> StoredVerdict:
    return StoredVerdict(
        repo_url=_text(row["repo_url"]),
        commit=_text(row["commit_sha"]),
        tester_fingerprint=_text(row["tester_fingerprint"]),
        error_id=_text(row["error_id"]),
        verdict=Verdict(_text(row["verdict"]).lower()),
        runs=_i(row["runs"]),
        bad_runs=_i(row["bad_runs"]),
        job_id=_opt_s(row["job_id"]),
        result_root=_opt_s(row["result_root"]),
        task_id=_i(row["task_id"]),
        updated_at=_i(row["updated_at"]),
    )


def regression_from_row(row: dict[str, Any]) -> Regression:
    related = row.get("related_jobs")
    loaded: Any = related
    if isinstance(related, (str, bytes)) and related:
        try:
            loaded = json.loads(related)
        except ValueError:
            loaded = []
    jobs = tuple(str(j) for j in loaded) if isinstance(loaded, list) else ()
    return Regression(
        id=int(row["id"]),
        errid=_text(row["errid"]),
        record_type=_text(row["record_type"]),
        category=_text(row["category"]),
        first_seen=_i(row["first_seen"]),
        last_seen=_i(row["last_seen"]),
        metric_name=_text(row["metric_name"]),
        value=float(row["value"] or 0.0),
        bisect_count=_i(row["bisect_count"]),
        valid=_text(row["valid"]),
        related_jobs=jobs,
    )


def regression_row(record: Regression) -> dict[str, Any]:
    return {
        "id": record.id, "record_type": record.record_type, "errid": record.errid,
        "category": record.category, "first_seen": record.first_seen,
        "last_seen": record.last_seen, "metric_name": record.metric_name,
        "value": record.value, "bisect_count": record.bisect_count, "valid": record.valid,
        "related_jobs": json.dumps(list(record.related_jobs)),
    }


def culprit_from_row(row: dict[str, Any]) -> Culprit:
    return Culprit(
        errid=_text(row["errid"]), git_url=_text(row["git_url"]),
        first_bad_commit=_text(row["first_bad_commit"]),
        bisect_task_id=_i(row["bisect_task_id"]), bad_job_id=_text(row["bad_job_id"]),
        confidence=round(float(row["confidence"] or 0.0), 4), found_at=_i(row["found_at"]),
    )


# The most related job ids a regression row keeps (newest last): the row is rewritten whole on
# every update, so it must stay small.
MAX_RELATED_JOBS = 100


# Manticore's full-text query operators (manual: Searching/Full_text_matching/Escaping).
_MATCH_SPECIAL = frozenset('!"$\'()-/<@\\^|~')


def manticore_escape(token: str) -> str:
    """A literal token for ``MATCH()``: every query operator backslash-escaped."""
    return "".join("\\" + ch if ch in _MATCH_SPECIAL else ch for ch in token)


def _chunks(items: Sequence[Any], size: int = PAGE_LIMIT) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class TaskFilter:
    """Optional filters of the task list. Only fixed SQL fragments are chosen here; every
    value is still bound."""

    _FRAGMENTS = {
        "status": "bisect_status = %(status)s",
        "end_reason": "end_reason = %(end_reason)s",
        "error_key": "error_key = %(error_key)s",
        "bad_job_id": "bad_job_id = %(bad_job_id)s",
        "suite": "suite = %(suite)s",
        "group_key": "group_key = %(group_key)s",
    }

    def __init__(self, *, status: TaskStatus | None = None, error_id: str | None = None,
                 bad_job_id: str | None = None, suite: str | None = None,
                 group_key: str | None = None) -> None:
        self.params: dict[str, Any] = {}
        if status is TaskStatus.CANCELLED:
            # A cancel is stored as compass-ci's 'failed' with the reason beside it.
            self.params["end_reason"] = EndReason.CANCELLED.value
        elif status is not None:
            self.params["status"] = status.value
        if error_id is not None:
            self.params["error_key"] = ids.text_key(error_id)
        if bad_job_id is not None:
            self.params["bad_job_id"] = bad_job_id
        if suite is not None:
            self.params["suite"] = suite
        if group_key is not None:
            self.params["group_key"] = group_key
        self.error_id = error_id
        self.suite = suite
        self.bad_job_id = bad_job_id

    def where(self) -> list[str]:
        return [self._FRAGMENTS[key] for key in self._FRAGMENTS if key in self.params]

    def matches_exactly(self, task: Task) -> bool:
        """Manticore's string ``=`` ignores case: recheck exact values in Python."""
        wanted = self.params.get("status")
        if wanted is not None and task.status.value != wanted:
            return False
        if self.bad_job_id is not None and task.bad_job_id != self.bad_job_id:
            return False
        if self.suite is not None and (task.suite or "") != self.suite:
            return False
        return self.error_id is None or task.error_id == self.error_id


class Repository:
    """Runs every statement the services need against one :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.dialect: Dialect = db.dialect
        self._q = load(db.dialect)

    # ------------------------------------------------------------------ schema
    async def server_version(self) -> str:
        row = await self.db.fetch_one(self._q["server_version"])
        if row is None:
            return ""
        return _text(row.get("version") or row.get("Value") or next(iter(row.values())))

    async def existing_tables(self) -> set[str]:
        rows = await self.db.fetch(self._q["show_tables"])
        return {_text(next(iter(row.values()))) for row in rows}

    async def existing_columns(self, table: Table) -> set[str]:
        rows = await self.db.fetch(self._q["describe_table"].replace("{table}", table.name))
        return {_text(row.get("Field") or next(iter(row.values()))) for row in rows}

    async def create_missing_tables(self) -> list[str]:
        """Create every table that is missing (compass-ci's with compass-ci's DDL) and add
        bisect-task's columns to a ``bisect`` table compass-ci created; returns what it did.
        Never alters compass-ci's ``jobs`` or ``regression``. Safe to run twice."""
        present = await self.existing_tables()
        created = []
        for table in TABLES:
            if table.name not in present:
                await self.db.execute(create_table_ddl(self.dialect, table))
                created.append(table.name)
        created.extend(await self.add_missing_columns())
        return created

    async def check_schema(self) -> dict[str, list[str]]:
        """Missing tables (key ``""``) and missing columns per table. For compass-ci's
        tables only the columns bisect-task reads count."""
        present = await self.existing_tables()
        report: dict[str, list[str]] = {"": [t.name for t in TABLES if t.name not in present]}
        for table in TABLES:
            if table.name in present:
                columns = await self.existing_columns(table)
                missing = [c for c in table.column_names() if c not in columns]
                if missing:
                    report[table.name] = missing
        return report

    async def add_missing_columns(self) -> list[str]:
        """``ALTER TABLE ... ADD COLUMN`` for what our own tables lack (never compass-ci's)."""
        added = []
        report = await self.check_schema()
        for table in TABLES:
            if table.name in FOREIGN_TABLES:
                continue
            for column in table.columns:
                if column.name in report.get(table.name, []):
                    await self.db.execute(add_column_ddl(self.dialect, table, column))
                    added.append(f"{table.name}.{column.name}")
        return added

    async def schema_warnings(self, *, now: int | None = None,
                              window_s: int = COEXISTENCE_WINDOW_S) -> list[str]:
        """What an operator must know before bisect-task runs on this database: compass-ci
        tables in another layout (never altered here), and signs that compass-ci's own bisect
        container still uses the ``bisect`` table (it resets every ``processing`` row to
        ``wait`` when it stops, and inserts rows every 5 minutes)."""
        warnings: list[str] = []
        report = await self.check_schema()
        for name in sorted(FOREIGN_TABLES):
            if report.get(name):
                warnings.append(
                    f"compass-ci's table {name} lacks {', '.join(report[name])}: bisect-task "
                    "reads compass-ci's compact layout (sbin/manti-table-{name}.sql) and "
                    "never alters compass-ci's tables".replace("{name}", name))
        if "bisect" in report.get("", []):
            return warnings
        since = (now or now_s()) - window_s
        try:
            found = {int(row["id"]): row for name in ("foreign_rows_created_since",
                                                      "foreign_rows_updated_since")
                     for row in await self.db.fetch(self._q[name], {"since": since})}
        except pymysql.err.MySQLError:  # no error_key column yet: init-db has not run
            return warnings
        rows = [found[key] for key in sorted(found)]
        if any(_text(row["error_id"]) == LEGACY_TEST_ERRID for row in rows):
            warnings.append(
                f"a {LEGACY_TEST_ERRID!r} task was written lately: compass-ci's bisect "
                "container writes one at every start. Stop it before bisect-task runs on this "
                "table (README: Migrating from compass-ci's bisect service)")
        written = [row for row in rows if _text(row["error_id"]) != LEGACY_TEST_ERRID]
        if written:
            warnings.append(
                f"{len(written)} bisect rows were written or changed in the last "
                f"{window_s // 3600} h by another service (no bisect-task key), e.g. id "
                f"{written[0]['id']}: is compass-ci's bisect container still running?")
        return warnings

    async def require_schema(self) -> None:
        report = await self.check_schema()
        if any(report.values()):
            raise SchemaError(f"database schema incomplete: {report}; run `bisect-admin init-db`")

    # ------------------------------------------------------------------ tasks
    async def insert_tasks(self, rows: Sequence[dict[str, Any]]) -> None:
        for chunk in _chunks(rows, 500):
            await self.db.execute_many(self._q["insert_task"], list(chunk))

    async def tasks_by_ids(self, task_ids: Sequence[int]) -> dict[int, Task]:
        found: dict[int, Task] = {}
        for chunk in _chunks(sorted(set(task_ids))):
            rows = await self.db.fetch(self._q["tasks_by_ids"], {"ids": tuple(chunk)})
            for row in rows:
                task = task_from_row(row)
                found[task.id] = task
        return found

    async def tasks_of_bad_jobs(self, bad_job_ids: Sequence[str]) -> list[Task]:
        """Every task row about these jobs, whoever wrote it (compass-ci's rows included)."""
        wanted = sorted({job_id for job_id in bad_job_ids if job_id})
        found: list[Task] = []
        for chunk in _chunks(wanted):
            after = 0
            while True:
                rows = await self.db.fetch(self._q["tasks_of_bad_jobs"],
                                           {"bad_job_ids": tuple(chunk), "after": after})
                found.extend(task_from_row(row) for row in rows)
                if len(rows) < PAGE_LIMIT:
                    break
                after = int(rows[-1]["id"])
        # Manticore's string ``=`` ignores case: keep exact matches only.
        return [task for task in found if task.bad_job_id in wanted]

    async def get_task(self, task_id: int) -> Task | None:
        return (await self.tasks_by_ids([task_id])).get(task_id)

    async def list_tasks(self, task_filter: TaskFilter, *, limit: int,
                         before: tuple[int, int] | None = None) -> list[Task]:
        """Newest first, paged by the key (created_at, id) so any depth works."""
        clauses = task_filter.where()
        params = dict(task_filter.params)
        if before is not None:
            clauses.append("(created_at < %(b_created)s OR (created_at = %(b_created)s"
                           " AND id < %(b_id)s))")
            params["b_created"], params["b_id"] = before
        params["limit"] = min(limit, PAGE_LIMIT)
        where = "WHERE " + " AND ".join(clauses) if clauses else ""
        sql = self._q["task_list"].replace("{where}", where)
        return [task_from_row(row) for row in await self.db.fetch(sql, params)]

    async def legacy_task_rows(self, *, status: str | None, limit: int) -> list[dict[str, Any]]:
        """compass-ci's list rows: ``{id, bad_job_id, error_id, bisect_status}``, newest id
        first; a status filter compares exactly (Manticore's ``=`` ignores case)."""
        params: dict[str, Any] = {"limit": min(limit, PAGE_LIMIT)}
        if status is None:
            rows = await self.db.fetch(self._q["legacy_task_list"], params)
        else:
            params["status"] = status
            rows = await self.db.fetch(self._q["legacy_task_list_by_status"], params)
        out = [{"id": int(row["id"]), "bad_job_id": _text(row["bad_job_id"]),
                "error_id": _text(row["error_id"]), "bisect_status": _text(row["bisect_status"])}
               for row in rows]
        return [row for row in out if status is None or row["bisect_status"] == status]

    async def task_ids_by_status(self, status: TaskStatus) -> list[int]:
        out: list[int] = []
        after = 0
        while True:
            rows = await self.db.fetch(self._q["task_ids_by_status"],
                                       {"status": status.value, "after": after,
                                        "limit": PAGE_LIMIT})
            out.extend(int(row["id"]) for row in rows)
            if len(rows) < PAGE_LIMIT:
                return out
            after = int(rows[-1]["id"])

    async def tasks_by_status(self, status: TaskStatus) -> list[Task]:
        out: list[Task] = []
        after = 0
        while True:
            rows = await self.db.fetch(self._q["tasks_by_status_page"],
                                       {"status": status.value, "after": after,
                                        "limit": PAGE_LIMIT})
            out.extend(task_from_row(row) for row in rows)
            if len(rows) < PAGE_LIMIT:
                return out
            after = int(rows[-1]["id"])

    async def claimable_tasks(self, testers: Sequence[str], limit: int) -> list[Task]:
        if not testers or limit <= 0:
            return []
        rows = await self.db.fetch(self._q["claimable_tasks"],
                                   {"testers": tuple(testers), "limit": min(limit, PAGE_LIMIT)})
        return [task_from_row(row) for row in rows]

    async def count_by_status(self) -> dict[str, int]:
        rows = await self.db.fetch(self._q["count_by_status"])
        counts = {status.value: 0 for status in TaskStatus}
        for row in rows:
            key = _text(row["bisect_status"]).lower()
            counts[key] = counts.get(key, 0) + int(row["n"])
        return counts

    async def mark_claimed(self, task_id: int, owner: str, lease_expires_ms: int,
                           claims: int, start_time: int) -> None:
        await self.db.execute(self._q["update_task_claimed"], {
            "id": task_id, "owner": owner, "lease_expires_ms": lease_expires_ms,
            "claims": claims, "start_time": start_time, "now": now_s()})

    async def renew_leases(self, task_ids: Sequence[int], lease_expires_ms: int) -> None:
        for chunk in _chunks(list(task_ids)):
            await self.db.execute(self._q["update_task_leases"],
                                  {"ids": tuple(chunk), "lease_expires_ms": lease_expires_ms})

    async def mark_requeued(self, task_id: int, *, attempts: int, retry_count: int,
                            last_error: str | None) -> None:
        await self.db.execute(self._q["update_task_requeued"], {
            "id": task_id, "attempts": attempts, "retry_count": retry_count,
            "queued_ms": now_ms(), "last_error": _s(last_error), "now": now_s()})

    async def mark_failed(self, task_id: int, *, attempts: int, last_error: str) -> None:
        await self.db.execute(self._q["update_task_failed"], {
            "id": task_id, "attempts": attempts, "last_error": last_error, "now": now_s()})

    async def mark_cancelled(self, task_id: int, reason: str) -> None:
        await self.db.execute(self._q["update_task_cancelled"],
                              {"id": task_id, "last_error": reason, "now": now_s()})

    async def mark_cancel_requested(self, task_id: int) -> None:
        await self.db.execute(self._q["update_task_cancel_requested"],
                              {"id": task_id, "now": now_s()})

    async def mark_completed(self, task_id: int, *, bad_commit: str | None,
                             first_bad_id: str | None, first_result_root: str | None,
                             work_dir: str | None, confidence: float | None,
                             verification: str | None, extra: dict[str, Any]) -> None:
        await self.db.execute(self._q["update_task_completed"], {
            "id": task_id, "bad_commit": _s(bad_commit), "first_bad_id": _s(first_bad_id),
            "first_result_root": _s(first_result_root), "work_dir": _s(work_dir),
            "confidence": float(confidence or 0.0), "verification": _s(verification),
            "j": _json_dump(extra), "now": now_s()})

    async def set_task_extra(self, task_id: int, extra: dict[str, Any]) -> None:
        await self.db.execute(self._q["update_task_extra"], {"id": task_id,
                                                             "j": _json_dump(extra)})

    async def set_task_origin(self, task: Task, *, tester: str, git_url: str, project: str,
                              suite: str, known_bad_commit: str, name: str,
                              extra: dict[str, Any]) -> None:
        """Complete a row another service wrote (the task-state writer's adoption)."""
        await self.db.execute(self._q["update_task_origin"], {
            "id": task.id, "tester": tester, "git_url": git_url, "project": project,
            "suite": suite, "known_bad_commit": known_bad_commit, "name": name,
            "error_key": ids.text_key(task.error_id),
            "group_key": ids.group_key(task.error_id, git_url),
            "source": task.source or "compass-ci", "j": _json_dump(extra)})

    async def update_testing(self, task_id: int, *, commit: str, phase: str) -> None:
        """The commit a consumer's engine tests now, and in which phase (its only writer)."""
        await self.db.execute(self._q["update_task_testing"], {
            "id": task_id, "current_commit": commit, "phase": phase, "progress_ms": now_ms()})

    async def update_progress(self, task_id: int, *, current_step: int, steps_estimate: int,
                              candidates_left: int) -> None:
        """Live progress; written by the consumer that owns the task (its only writer)."""
        await self.db.execute(self._q["update_task_progress"], {
            "id": task_id, "current_step": current_step, "steps_estimate": steps_estimate,
            "candidates_left": candidates_left, "progress_ms": now_ms()})

    async def delete_tasks(self, task_ids: Sequence[int]) -> None:
        """Delete tasks and their steps."""
        for chunk in _chunks(list(task_ids)):
            while True:
                rows = await self.db.fetch(self._q["step_ids_of_tasks"],
                                           {"task_ids": tuple(chunk)})
                if not rows:
                    break
                await self.db.execute(self._q["delete_steps"],
                                      {"ids": tuple(int(r["id"]) for r in rows)})
            await self.db.execute(self._q["delete_tasks"], {"ids": tuple(chunk)})

    # ------------------------------------------------------------------ steps
    async def record_step(self, step: Step) -> None:
        """Idempotent: the id is (task, attempt, seq), so a rewrite replaces, never doubles."""
        await self.db.execute(self._q["replace_step"], {
            "id": ids.step_id(step.task_id, step.attempt, step.seq),
            "task_id": step.task_id, "attempt": step.attempt, "seq": step.seq,
            "commit_sha": step.commit, "verdict": step.verdict.value, "runs": step.runs,
            "bad_runs": step.bad_runs, "job_id": _s(step.job_id),
            "result_root": _s(step.result_root), "reused": int(step.reused),
            "detail": _s(step.detail), "started_ms": step.started_ms,
            "duration_ms": step.duration_ms, "created_at": step.created_at or now_s(),
            "phase": _s(step.phase),
            "posterior": json.dumps([[c, round(p, 6)] for c, p in
                                     step.posterior[:MAX_POSTERIOR]])})

    async def steps_of_task(self, task_id: int) -> list[Step]:
        steps: list[Step] = []
        after = 0
        while True:
            rows = await self.db.fetch(self._q["steps_of_task"],
                                       {"task_id": task_id, "after": after})
            steps.extend(step_from_row(row) for row in rows)
            if len(rows) < PAGE_LIMIT:
                break
            after = int(rows[-1]["id"])
        steps.sort(key=lambda s: (s.attempt, s.seq))
        return steps

    # ------------------------------------------------------------------ verdicts
    async def record_verdict(self, verdict: StoredVerdict) -> None:
        await self.db.execute(self._q["replace_verdict"], {
            "id": ids.verdict_id(verdict.repo_url, verdict.commit, verdict.tester_fingerprint,
                                 verdict.error_id),
            "scope_key": ids.verdict_scope_key(verdict.repo_url, verdict.tester_fingerprint,
                                               verdict.error_id),
            "repo_url": verdict.repo_url, "commit_sha": verdict.commit,
            "tester_fingerprint": verdict.tester_fingerprint, "error_id": verdict.error_id,
            "verdict": verdict.verdict.value, "runs": verdict.runs,
            "bad_runs": verdict.bad_runs, "job_id": _s(verdict.job_id),
            "result_root": _s(verdict.result_root), "task_id": verdict.task_id,
            "updated_at": verdict.updated_at or now_s()})

    async def verdicts_in_scope(self, repo_url: str, tester_fingerprint: str,
                                error_id: str) -> list[StoredVerdict]:
        scope = ids.verdict_scope_key(repo_url, tester_fingerprint, error_id)
        out: list[StoredVerdict] = []
        after = 0
        while True:
            rows = await self.db.fetch(self._q["verdicts_in_scope"],
                                       {"scope_key": scope, "after": after,
                                        "limit": PAGE_LIMIT})
            out.extend(verdict_from_row(row) for row in rows)
            if len(rows) < PAGE_LIMIT:
                break
            after = int(rows[-1]["id"])
        # The scope key is a hash: recheck the exact strings.
        return [v for v in out if v.repo_url == repo_url and v.error_id == error_id
                and v.tester_fingerprint == tester_fingerprint]

    async def forget_verdicts(self, repo_url: str, error_id: str) -> int:
        """Delete every stored verdict of ``error_id`` in ``repo_url`` (whatever the tester):
        the next bisection of that pair tests every commit afresh. Returns how many."""
        doomed: list[int] = []
        after = 0
        while True:
            rows = await self.db.fetch(self._q["verdicts_of_error"],
                                       {"error_id": error_id, "after": after})
            doomed.extend(int(row["id"]) for row in rows
                          if _text(row["error_id"]) == error_id
                          and _text(row["repo_url"]) == repo_url)
            if len(rows) < PAGE_LIMIT:
                break
            after = int(rows[-1]["id"])
        for chunk in _chunks(doomed):
            await self.db.execute(self._q["delete_verdicts"], {"ids": tuple(chunk)})
        return len(doomed)

    # ------------------------------------------------------------------ regression
    async def regression_whitelist(self) -> set[str]:
        """Error ids compass-ci's regression table marks worth bisecting (exact strings):
        ``record_type = 'errid' AND valid = 'true'``, as compass-ci reads it."""
        allowed: set[str] = set()
        after = 0
        while True:
            rows = await self.db.fetch(self._q["regression_whitelist_page"],
                                       {"after": after, "limit": PAGE_LIMIT})
            for row in rows:
                if _text(row["valid"]).lower() == "true" and _text(row["errid"]):
                    allowed.add(_text(row["errid"]))
            if len(rows) < PAGE_LIMIT:
                return allowed
            after = int(rows[-1]["id"])

    async def regressions_of(self, errid: str) -> list[Regression]:
        """compass-ci's rows for exactly this error id (Manticore's ``=`` ignores case)."""
        rows = await self.db.fetch(self._q["regression_by_errid"], {"errid": errid})
        records = [regression_from_row(row) for row in rows]
        return [r for r in records if r.errid == errid and r.record_type == "errid"]

    async def record_regression(self, errid: str, *, bad_job_id: str, category: str,
                                whitelist_new: bool) -> Regression:
        """Count a bisection of ``errid`` in compass-ci's regression table.

        An existing row keeps its id, ``valid`` and ``first_seen``; ``bisect_count``,
        ``last_seen`` and ``related_jobs`` change through REPLACE (the table is columnar, so
        UPDATE cannot change them). A new row is ``valid='true'`` only when ``whitelist_new``
        (an error id discovered from compass-ci jobs)."""
        now = now_s()
        existing = await self.regressions_of(errid)
        if existing:
            # Several rows (written by hand or by older services): the whitelisted one counts.
            current = max(existing, key=lambda r: (r.whitelisted, r.bisect_count, -r.id))
            related = tuple(j for j in current.related_jobs if j != bad_job_id)
            record = Regression(
                id=current.id, errid=current.errid, record_type=current.record_type,
                category=current.category or category, first_seen=current.first_seen or now,
                last_seen=now, metric_name=current.metric_name, value=current.value,
                bisect_count=current.bisect_count + 1, valid=current.valid,
                related_jobs=(*related, bad_job_id)[-MAX_RELATED_JOBS:])
            await self.db.execute(self._q["replace_regression"], regression_row(record))
            return record
        record = Regression(
            id=ids.regression_id(errid), errid=errid, category=category, first_seen=now,
            last_seen=now, bisect_count=1, valid="true" if whitelist_new else "false",
            related_jobs=(bad_job_id,))
        await self.db.execute(self._q["replace_regression"], regression_row(record))
        return record

    async def insert_regression(self, record: Regression) -> None:
        """A row as compass-ci (or a person) writes it: tests, the demo, the benches."""
        await self.db.execute(self._q["insert_regression"], regression_row(record))

    async def record_culprit(self, culprit: Culprit) -> None:
        """bisect-task's own record: one row per (error id, repository), rewritten by the
        latest bisection of that pair."""
        await self.db.execute(self._q["replace_culprit"], {
            "id": ids.stable_id("culprit", culprit.errid, culprit.git_url),
            "errid": culprit.errid, "errid_key": ids.text_key(culprit.errid),
            "git_url": culprit.git_url, "first_bad_commit": culprit.first_bad_commit,
            "bisect_task_id": culprit.bisect_task_id, "bad_job_id": culprit.bad_job_id,
            "confidence": float(culprit.confidence), "found_at": culprit.found_at or now_s(),
            "updated_at": now_s()})

    async def culprits_of(self, errid: str) -> list[Culprit]:
        rows = await self.db.fetch(self._q["culprits_by_errid_key"],
                                   {"errid_key": ids.text_key(errid)})
        return [c for c in map(culprit_from_row, rows) if c.errid == errid]

    # ------------------------------------------------------------------ jobs (compass-ci's)
    async def insert_job_rows(self, rows: Sequence[dict[str, Any]], *,
                              replace: bool = False) -> None:
        """Stand in for compass-ci's scheduler (development, tests, the demo): rows as
        :func:`common.compass_job.job_row` builds them."""
        statement = self._q["replace_job" if replace else "insert_job"]
        for chunk in _chunks(list(rows), 500):
            await self.db.execute_many(statement, list(chunk))

    async def get_job(self, job_id: int) -> CompassJob | None:
        row = await self.db.fetch_one(self._q["job_by_id"], {"id": job_id})
        return CompassJob.from_row(row) if row else None

    async def jobs_by_ids(self, job_ids: Sequence[int]) -> dict[int, CompassJob]:
        found: dict[int, CompassJob] = {}
        for chunk in _chunks(sorted(set(job_ids))):
            for row in await self.db.fetch(self._q["jobs_by_ids"], {"ids": tuple(chunk)}):
                job = CompassJob.from_row(row)
                found[job.id] = job
        return found

    async def discovery_jobs_after(self, after: int, limit: int,
                                   healths: Sequence[tuple[str, int]]) -> list[CompassJob]:
        """Finished jobs with complete data and one of ``healths`` ((name, code) pairs), with
        error ids and a repository, not submitted by a bisection; by id, above ``after``."""
        if not healths:
            return []
        tokens = " | ".join(kv_token("job_health", name) for name, _ in healths)
        rows = await self.db.fetch(self._q["discovery_jobs_after"], {
            "after": after, "limit": min(limit, PAGE_LIMIT),
            "healths": tuple(code for _, code in healths),
            # compass-ci's own tokens (compass-ci.md §3); names come from its code table.
            "match": f"@full_text_kv {kv_token('job_stage', 'finish')} ({tokens})"})
        return [CompassJob.from_row(row) for row in rows]

    async def first_unsettled_job_after(self, after: int, horizon_s: int) -> int | None:
        row = await self.db.fetch_one(self._q["first_unsettled_job_after"],
                                      {"after": after, "horizon": horizon_s})
        return int(row["id"]) if row else None

    async def finished_jobs_at_commit(self, suite: str, source: Source,
                                      commit: str) -> list[CompassJob]:
        """Finished jobs of ``suite`` with complete data that tested ``commit`` where
        ``source`` selects it (newest first, at most 100); the caller compares the rest."""
        params: dict[str, Any] = {"suite": suite, "commit": commit}
        if self.dialect is Dialect.MANTICORE:
            token = source.full_text_token(commit)
            if token is not None:
                params["match"] = "@full_text_kv " + manticore_escape(token)
                sql = self._q["finished_jobs_at_token"]
            elif source.commit_path == MAKEPKG_COMMIT:
                sql = self._q["finished_jobs_at_makepkg_commit"]
            else:
                sql = self._q["finished_jobs_at_upstream_commit"]
        else:
            params["path"] = "$" + "".join(f'."{key}"' for key in source.commit_path)
            sql = self._q["finished_jobs_at_path"]
        jobs = [CompassJob.from_row(row) for row in await self.db.fetch(sql, params)]
        return [job for job in jobs if job.suite == suite and job.source is not None
                and job.source.commit_path == source.commit_path and job.commit == commit]

    async def max_job_id(self) -> int:
        row = await self.db.fetch_one(self._q["max_job_id"])
        return int(row["id"]) if row else 0

    # ------------------------------------------------------------------ service state
    async def get_state(self, name: str) -> tuple[str, str, int] | None:
        """(value, owner, updated_ms) of a named state row."""
        row = await self.db.fetch_one(self._q["state_by_id"], {"id": ids.state_id(name)})
        if row is None:
            return None
        return _text(row["value"]), _text(row["owner"]), _i(row["updated_ms"])

    async def put_state(self, name: str, value: str, owner: str = "") -> None:
        params = {"id": ids.state_id(name), "name": name, "value": value, "owner": owner,
                  "updated_ms": now_ms()}
        affected = await self.db.execute(self._q["update_state"], params)
        if affected == 0:
            await self.db.execute(self._q["insert_state"], params)
