"""The one class that runs SQL. Every statement comes from ``queries.sql``; every value is a
bound parameter. ``None`` in Python is ``''``/0 in the database (Manticore rejects NULL) and
the conversion happens here only."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from common import ids
from common.db import Database
from common.errors import SchemaError
from common.models import (
    Job,
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
        status=TaskStatus(_text(row["bisect_status"]).lower() or "wait"),
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
    )


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


def job_from_row(row: dict[str, Any]) -> Job:
    return Job(
        id=int(row["id"]),
        suite=_opt_s(row["suite"]),
        category=_opt_s(row["category"]),
        submit_time=_i(row["submit_time"]),
        job_stage=_opt_s(row["job_stage"]),
        job_health=_opt_s(row["job_health"]),
        job_data_readiness=_opt_s(row["job_data_readiness"]),
        errids=tuple(_text(row["errid"]).split()),
        data=_json_load(row["j"]),
    )


_TRUE_WORDS = frozenset({"true", "1", "yes", "valid", "y"})


def regression_from_row(row: dict[str, Any]) -> Regression:
    return Regression(
        errid=_text(row["errid"]),
        record_type=_text(row["record_type"]),
        category=_opt_s(row["category"]),
        valid=_text(row["valid"]).strip().lower() in _TRUE_WORDS,
        first_bad_commit=_opt_s(row["first_bad_commit"]),
        bisect_task_id=_i(row["bisect_task_id"]),
        git_url=_opt_s(row["git_url"]),
        bad_job_id=_opt_s(row["bad_job_id"]),
        found_at=_i(row["found_at"]),
        updated_at=_i(row["updated_at"]),
    )


def _chunks(items: Sequence[Any], size: int = PAGE_LIMIT) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class TaskFilter:
    """Optional filters of the task list. Only fixed SQL fragments are chosen here; every
    value is still bound."""

    _FRAGMENTS = {
        "status": "bisect_status = %(status)s",
        "error_key": "error_key = %(error_key)s",
        "bad_job_id": "bad_job_id = %(bad_job_id)s",
        "suite": "suite = %(suite)s",
        "group_key": "group_key = %(group_key)s",
    }

    def __init__(self, *, status: TaskStatus | None = None, error_id: str | None = None,
                 bad_job_id: str | None = None, suite: str | None = None,
                 group_key: str | None = None) -> None:
        self.params: dict[str, Any] = {}
        if status is not None:
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
        """Create every table that is missing; returns their names. Safe to run twice."""
        present = await self.existing_tables()
        created = []
        for table in TABLES:
            if table.name not in present:
                await self.db.execute(create_table_ddl(self.dialect, table))
                created.append(table.name)
        return created

    async def check_schema(self) -> dict[str, list[str]]:
        """Missing tables (key ``""``) and missing columns per table."""
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
            "duration_ms": step.duration_ms, "created_at": step.created_at or now_s()})

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

    # ------------------------------------------------------------------ regression
    async def regression_whitelist(self) -> set[str]:
        """Error ids the regression table marks as worth bisecting (exact strings)."""
        allowed: set[str] = set()
        after = 0
        while True:
            rows = await self.db.fetch(self._q["regression_page"],
                                       {"after": after, "limit": PAGE_LIMIT})
            for row in rows:
                record = regression_from_row(row)
                if record.valid and record.record_type == "errid":
                    allowed.add(record.errid)
            if len(rows) < PAGE_LIMIT:
                return allowed
            after = int(rows[-1]["id"])

    async def get_regression(self, errid: str) -> Regression | None:
        row = await self.db.fetch_one(self._q["regression_by_id"],
                                      {"id": ids.regression_id(errid)})
        if row is None:
            return None
        record = regression_from_row(row)
        return record if record.errid == errid else None

    async def upsert_regression(self, record: Regression) -> None:
        """Insert the row for an error id, or fill in what a bisection found."""
        existing = await self.get_regression(record.errid)
        now = now_s()
        values = {
            "id": ids.regression_id(record.errid),
            "first_bad_commit": _s(record.first_bad_commit),
            "bisect_task_id": record.bisect_task_id, "git_url": _s(record.git_url),
            "bad_job_id": _s(record.bad_job_id), "found_at": record.found_at,
            "updated_at": now,
        }
        if existing is not None:
            await self.db.execute(self._q["update_regression_found"], values)
            return
        values.update({
            "record_type": record.record_type, "errid": record.errid,
            "errid_key": ids.text_key(record.errid), "category": _s(record.category),
            "valid": "true" if record.valid else "false", "j": _json_dump({}),
        })
        await self.db.execute(self._q["insert_regression"], values)

    # ------------------------------------------------------------------ jobs
    async def insert_jobs(self, jobs: Sequence[Job]) -> None:
        """Development, tests and demo only: compass-ci writes this table in production."""
        rows = [{
            "id": job.id, "suite": _s(job.suite), "category": _s(job.category),
            "submit_time": job.submit_time, "my_account": "", "tbox_group": "",
            "os": "", "os_arch": "", "job_stage": _s(job.job_stage),
            "job_health": _s(job.job_health),
            "job_data_readiness": _s(job.job_data_readiness),
            "errid": " ".join(job.errids), "j": _json_dump(job.data),
        } for job in jobs]
        for chunk in _chunks(rows, 500):
            await self.db.execute_many(self._q["insert_job"], list(chunk))

    async def get_job(self, job_id: int) -> Job | None:
        row = await self.db.fetch_one(self._q["job_by_id"], {"id": job_id})
        return job_from_row(row) if row else None

    async def jobs_by_ids(self, job_ids: Sequence[int]) -> dict[int, Job]:
        found: dict[int, Job] = {}
        for chunk in _chunks(sorted(set(job_ids))):
            for row in await self.db.fetch(self._q["jobs_by_ids"], {"ids": tuple(chunk)}):
                job = job_from_row(row)
                found[job.id] = job
        return found

    async def failed_jobs_after(self, after: int, limit: int) -> list[Job]:
        rows = await self.db.fetch(self._q["failed_jobs_after"],
                                   {"after": after, "limit": min(limit, PAGE_LIMIT)})
        return [job_from_row(row) for row in rows]

    async def first_unfinished_job_after(self, after: int, horizon_s: int) -> int | None:
        row = await self.db.fetch_one(self._q["first_unfinished_job_after"],
                                      {"after": after, "horizon": horizon_s})
        return int(row["id"]) if row else None

    async def finished_jobs_at_commit(self, suite: str, commit: str) -> list[Job]:
        """Finished jobs of a suite that tested ``commit`` (newest first, at most 100);
        callers compare the remaining parameters in Python."""
        rows = await self.db.fetch(self._q["finished_jobs_at_commit"],
                                   {"suite": suite, "commit": commit})
        jobs = [job_from_row(row) for row in rows]
        return [job for job in jobs if job.data.get("upstream_commit") == commit]

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
