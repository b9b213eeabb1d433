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
    FULLTEXT = "fulltext"  # Manticore full-text field (MATCH only; compass-ci's errid)
    BIGINT = "bigint"
    INT = "int"  # Manticore's int: unsigned 32-bit (compass-ci's codes and counters)
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
    # Table options of compass-ci's DDL, kept so that MATCH tokenizes as compass-ci expects.
    manticore_options: str = ""

    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)


def _cols(spec: str) -> tuple[Column, ...]:
    """Parse ``"name type, name type"`` so the table list below stays readable."""
    columns = []
    for item in spec.split(","):
        name, kind = item.split()
        columns.append(Column(name, ColumnType(kind)))
    return tuple(columns)


# compass-ci's table options (sbin/manti-table-*.sql, branch compact).
_COMPASS_CHARSET = "charset_table='U+0021..U+007E'"
_COMPASS_COLUMNAR = f"engine='columnar' {_COMPASS_CHARSET}"

# compass-ci's bisect table (sbin/manti-table-bisect.sql) with bisect-task's columns beside it.
# compass-ci's own service writes only its columns; rows it wrote read '' / 0 in ours.
BISECT_COMPASS_COLUMNS = (
    "bad_job_id key, error_id text, bisect_status key, bisect_metrics text, project key,"
    " git_url text, bad_commit key, first_bad_id key, first_result_root text, work_dir text,"
    " start_time bigint, end_time bigint, priority_level int, timeout int, retry_count int,"
    " last_error text, created_at bigint, updated_at bigint, j json"
)
BISECT = Table(
    "bisect",
    _cols(
        BISECT_COMPASS_COLUMNS + ","
        # What bisect-task adds.
        " error_key key, group_key key, name text, suite key, tester key, source key,"
        " known_bad_commit key, good_commit key, owner key, lease_expires_ms bigint,"
        " claims bigint, attempts bigint, cancel_requested bigint, queued_ms bigint,"
        " confidence float, verification key, current_step bigint, steps_estimate bigint,"
        " candidates_left bigint, progress_ms bigint, end_reason key, current_commit key,"
        " phase key"
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
    manticore_options=_COMPASS_CHARSET,
)

# The bisect table as compass-ci creates it (no column of bisect-task's): what init-db finds
# on a compass-ci site, and what tests start from.
BISECT_AS_COMPASS_CREATES = Table("bisect", _cols(BISECT_COMPASS_COLUMNS),
                                  manticore_options=_COMPASS_CHARSET)

BISECT_STEP = Table(
    "bisect_step",
    _cols(
        "task_id bigint, attempt bigint, seq bigint, commit_sha key, verdict key, runs bigint,"
        " bad_runs bigint, job_id key, result_root text, reused bigint, detail text,"
        " started_ms bigint, duration_ms bigint, created_at bigint, phase key, posterior text"
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

# bisect-task's culprit records: one row per (error id, repository), so a bisection of one
# repository never overwrites what another found for the same error id. compass-ci's
# ``regression`` table is left in compass-ci's shape (never altered).
BISECT_CULPRIT = Table(
    "bisect_culprit",
    _cols(
        "errid text, errid_key key, git_url text, first_bad_commit key, bisect_task_id bigint,"
        " bad_job_id key, confidence float, found_at bigint, updated_at bigint"
    ),
    mysql_indexes=("KEY idx_errid_key (errid_key)",),
)

# compass-ci's regression table (sbin/manti-table-regression.sql): its whitelist of error ids.
REGRESSION = Table(
    "regression",
    _cols(
        "record_type key, errid text, category key, first_seen bigint, last_seen bigint,"
        " metric_name key, value float, bisect_count bigint, valid key, related_jobs json"
    ),
    mysql_indexes=("KEY idx_record_type (record_type)",),
    manticore_options=_COMPASS_COLUMNAR,
)

# compass-ci's jobs table (sbin/manti-table-jobs.sql), owned by its scheduler. We create it only
# where none exists (the bundled Manticore of compose, the demo, tests), never alter it.
JOBS = Table(
    "jobs",
    _cols(
        "suite key, category key, my_account key, testbox key, arch key, osv key,"
        " submit_time bigint, boot_time bigint, running_time bigint, finish_time bigint,"
        " boot_seconds int, run_seconds int, istage int, ihealth int, idata_readiness int,"
        " j json, errid fulltext, full_text_kv fulltext"
    ),
    mysql_indexes=("KEY idx_submit_time (submit_time)",),
    manticore_options=_COMPASS_COLUMNAR,
)

# Small key/value rows the producer keeps: the discovery cursor, the writer's heartbeat.
SERVICE_STATE = Table(
    "bisect_service_state",
    _cols("name key, value text, owner key, updated_ms bigint"),
)

TABLES: tuple[Table, ...] = (BISECT, BISECT_STEP, BISECT_VERDICT, BISECT_CULPRIT, REGRESSION,
                             SERVICE_STATE, JOBS)
# Tables compass-ci owns in production: ``check-db`` reports what they lack, nothing alters them.
FOREIGN_TABLES = frozenset({"jobs", "regression"})

_MANTICORE_TYPES = {
    ColumnType.KEY: "string",
    ColumnType.TEXT: "string",
    ColumnType.FULLTEXT: "text",
    ColumnType.BIGINT: "bigint",
    ColumnType.INT: "int",
    ColumnType.FLOAT: "float",
    ColumnType.JSON: "json",
}
_MYSQL_TYPES = {
    ColumnType.KEY: "VARCHAR(255) NOT NULL DEFAULT ''",
    ColumnType.TEXT: "MEDIUMTEXT NOT NULL DEFAULT ''",
    ColumnType.FULLTEXT: "MEDIUMTEXT NOT NULL DEFAULT ''",
    ColumnType.BIGINT: "BIGINT NOT NULL DEFAULT 0",
    ColumnType.INT: "INT UNSIGNED NOT NULL DEFAULT 0",
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
        options = f" {table.manticore_options}" if table.manticore_options else ""
        return f"CREATE TABLE IF NOT EXISTS {table.name} ({', '.join(parts)}){options}"
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
