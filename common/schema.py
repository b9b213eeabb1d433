"""The tables, once, and their DDL for each dialect.

Manticore: ``id bigint`` is implicit, no NOT NULL/DEFAULT/keys, ``string`` for everything we
filter on (``text`` would be full-text only), ``bigint`` for every signed number and time
(``int`` is unsigned 32-bit there). MariaDB/MySQL get the closest types plus the indexes the
queries need. Absent values are stored as ``''``/0 in both (Manticore rejects NULL).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from common.settings import Dialect


class ColumnType(Enum):
    KEY = "key"  # short string we filter or index on
    TEXT = "text"  # string of any length (error ids, URLs, messages)
    BIGINT = "bigint"
    FLOAT = "float"
    JSON = "json"


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    mysql_indexes: tuple[str, ...] = ()

    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)


def _cols(spec: str) -> tuple[Column, ...]:
    """Parse ``"name type, name type"`` so the table list below stays readable."""
    columns = []
    for item in spec.split(","):
        name, kind = item.split()
        columns.append(Column(name, ColumnType(kind)))
    return tuple(columns)


BISECT = Table(
    "bisect",
    _cols(
        # compass-ci's columns, kept by name so its tools keep working.
        "bad_job_id key, error_id text, bisect_status key, project key, git_url text,"
        " bad_commit key, first_bad_id key, first_result_root text, work_dir text,"
        " start_time bigint, end_time bigint, priority_level bigint, timeout bigint,"
        " retry_count bigint, last_error text, created_at bigint, updated_at bigint, j json,"
        # What this design adds.
        " error_key key, group_key key, name text, suite key, tester key, source key,"
        " known_bad_commit key, good_commit key, owner key, lease_expires_ms bigint,"
        " claims bigint, attempts bigint, cancel_requested bigint, queued_ms bigint,"
        " confidence float, verification key, current_step bigint, steps_estimate bigint,"
        " candidates_left bigint, progress_ms bigint"
    ),
    mysql_indexes=(
        # Matches the claim order (priority DESC, queued_ms ASC, id ASC): no filesort, the
        # LIMIT stops the scan (15 ms a claim with 10,000 waiting without it).
        "KEY idx_status_queue (bisect_status, priority_level DESC, queued_ms)",
        "KEY idx_created (created_at, id)",
        "KEY idx_error_key (error_key)",
        "KEY idx_group_key (group_key)",
        "KEY idx_bad_job (bad_job_id)",
    ),
)

BISECT_STEP = Table(
    "bisect_step",
    _cols(
        "task_id bigint, attempt bigint, seq bigint, commit_sha key, verdict key, runs bigint,"
        " bad_runs bigint, job_id key, result_root text, reused bigint, detail text,"
        " started_ms bigint, duration_ms bigint, created_at bigint"
    ),
    mysql_indexes=("KEY idx_task (task_id, attempt, seq)",),
)

BISECT_VERDICT = Table(
    "bisect_verdict",
    _cols(
        "scope_key key, repo_url text, commit_sha key, tester_fingerprint key, error_id text,"
        " verdict key, runs bigint, bad_runs bigint, job_id key, result_root text,"
        " task_id bigint, updated_at bigint"
    ),
    mysql_indexes=("KEY idx_scope (scope_key)",),
)

REGRESSION = Table(
    "regression",
    _cols(
        "record_type key, errid text, errid_key key, category key, valid key,"
        " first_bad_commit key, bisect_task_id bigint, git_url text, bad_job_id key,"
        " found_at bigint, updated_at bigint, j json"
    ),
    mysql_indexes=("KEY idx_record_type (record_type)",),
)

# compass-ci owns this table in production; we create it only for development, tests, demo.
JOBS = Table(
    "jobs",
    _cols(
        "suite key, category key, submit_time bigint, my_account key, tbox_group key, os key,"
        " os_arch key, job_stage key, job_health key, job_data_readiness key, errid text, j json"
    ),
)

# Small key/value rows the producer keeps: the discovery cursor, the writer's heartbeat.
SERVICE_STATE = Table(
    "bisect_service_state",
    _cols("name key, value text, owner key, updated_ms bigint"),
)

TABLES: tuple[Table, ...] = (BISECT, BISECT_STEP, BISECT_VERDICT, REGRESSION, SERVICE_STATE, JOBS)
# Tables that belong to compass-ci in production: ``check-db`` reports them, never alters them.
FOREIGN_TABLES = frozenset({"jobs"})

_MANTICORE_TYPES = {
    ColumnType.KEY: "string",
    ColumnType.TEXT: "string",
    ColumnType.BIGINT: "bigint",
    ColumnType.FLOAT: "float",
    ColumnType.JSON: "json",
}
_MYSQL_TYPES = {
    ColumnType.KEY: "VARCHAR(255) NOT NULL DEFAULT ''",
    ColumnType.TEXT: "MEDIUMTEXT NOT NULL DEFAULT ''",
    ColumnType.BIGINT: "BIGINT NOT NULL DEFAULT 0",
    ColumnType.FLOAT: "DOUBLE NOT NULL DEFAULT 0",
    ColumnType.JSON: "LONGTEXT NULL",
}


def column_ddl(dialect: Dialect, column: Column) -> str:
    types = _MANTICORE_TYPES if dialect is Dialect.MANTICORE else _MYSQL_TYPES
    return f"{column.name} {types[column.type]}"


def create_table_ddl(dialect: Dialect, table: Table) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for one table in one dialect."""
    parts = [column_ddl(dialect, column) for column in table.columns]
    if dialect is Dialect.MANTICORE:
        return f"CREATE TABLE IF NOT EXISTS {table.name} ({', '.join(parts)})"
    parts.insert(0, "id BIGINT NOT NULL PRIMARY KEY")
    parts.extend(table.mysql_indexes)
    return (
        f"CREATE TABLE IF NOT EXISTS {table.name} ({', '.join(parts)})"
        " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"
    )


def add_column_ddl(dialect: Dialect, table: Table, column: Column) -> str:
    return f"ALTER TABLE {table.name} ADD COLUMN {column_ddl(dialect, column)}"


def table_by_name(name: str) -> Table:
    for table in TABLES:
        if table.name == name:
            return table
    raise KeyError(name)
