"""bisect-task on a database that holds compass-ci's own tables (compact layout)."""

from __future__ import annotations

import time

from common.repository import Repository
from common.schema import (
    BISECT,
    JOBS,
    REGRESSION,
    Column,
    ColumnType,
    Table,
    create_table_ddl,
)
from tests.fake_compass import create_compass_tables


async def test_init_db_on_compass_tables_adds_only_bisect_columns(repo: Repository) -> None:
    await create_compass_tables(repo)
    jobs_before = await repo.existing_columns(JOBS)
    regression_before = await repo.existing_columns(REGRESSION)
    assert "end_reason" in (await repo.check_schema())["bisect"]
    changed = await repo.create_missing_tables()
    assert changed and all(name.startswith("bisect.") for name in changed)
    assert await repo.existing_columns(JOBS) == jobs_before
    assert await repo.existing_columns(REGRESSION) == regression_before
    assert set(BISECT.column_names()) <= await repo.existing_columns(BISECT)
    assert not any((await repo.check_schema()).values())
    assert await repo.schema_warnings() == []


async def test_check_db_names_what_a_compass_table_lacks(repo: Repository) -> None:
    # compass-ci's master-branch layout (Elasticsearch era): string stage and health columns.
    master_jobs = Table("jobs", (Column("suite", ColumnType.KEY),
                                 Column("job_stage", ColumnType.KEY),
                                 Column("job_health", ColumnType.KEY),
                                 Column("j", ColumnType.JSON)))
    await repo.db.execute("DROP TABLE jobs")
    await repo.db.execute(create_table_ddl(repo.dialect, master_jobs))
    assert await repo.create_missing_tables() == []  # never altered
    report = await repo.check_schema()
    assert {"istage", "ihealth", "idata_readiness", "errid"} <= set(report["jobs"])
    (warning,) = await repo.schema_warnings()
    assert "jobs lacks" in warning and "istage" in warning and "never alters" in warning


async def test_check_db_warns_while_compass_cis_bisect_container_writes(
        repo: Repository) -> None:
    now = int(time.time())
    # As compass-ci's service inserts them: created_at only.
    for task_id, errid in ((11, "test_errid_123"), (12, "some.errid")):
        await repo.db.execute(
            "INSERT INTO bisect (id, bad_job_id, error_id, bisect_status, created_at) "
            "VALUES (%(id)s, '12345', %(errid)s, 'wait', %(now)s)",
            {"id": task_id, "errid": errid, "now": now})
    warnings = await repo.schema_warnings(now=now)
    assert any("test_errid_123" in w and "container" in w for w in warnings)
    assert any("1 bisect rows" in w and "id 12" in w for w in warnings)
    assert await repo.schema_warnings(now=now + 2 * 24 * 3600) == []
