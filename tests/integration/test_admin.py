"""``bisect-admin init-db`` creates the database when it is missing and the user may."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from common.private_db import drop_database
from common.settings import DbUrl, Dialect
from tests.conftest import url_string


def _admin(url: DbUrl, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "admin.admin", *args],
                          env={**os.environ, "BISECT_DB_URL": url_string(url)},
                          capture_output=True, text=True, timeout=120, check=False)


def test_init_db_creates_a_missing_database(db_url: DbUrl) -> None:
    if db_url.dialect is not Dialect.MYSQL:
        pytest.skip("Manticore has no databases to create")
    missing = db_url.with_database(f"{db_url.database}_new")
    drop_database(missing)
    try:
        before = _admin(missing, "check-db")
        assert before.returncode == 2 and "Traceback" not in before.stderr
        assert f"database '{missing.database}' does not exist" in before.stderr
        assert "run `bisect-admin init-db` to create it" in before.stderr
        created = _admin(missing, "init-db")
        assert created.returncode == 0, created.stderr
        assert f"database created: {missing.database}" in created.stdout
        assert "tables created: " in created.stdout
        after = _admin(missing, "check-db")
        assert after.returncode == 0 and "schema complete" in after.stdout, after.stderr
    finally:
        drop_database(missing)
