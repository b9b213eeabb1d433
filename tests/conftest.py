"""Shared fixtures: a private database per test on the real server.

``BISECT_TEST_DB_URL`` (default ``mysql://root@127.0.0.1:3306/``) is the MariaDB server; each
test gets a database of its own, dropped afterwards. When ``BISECT_TEST_MANTICORE_URL`` is set,
the database tests run a second time against that Manticore server (one namespace there, so
its tables are emptied before each test).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator

import pymysql
import pytest

from common.db import Database
from common.private_db import drop_database, recreate_database
from common.repository import Repository
from common.schema import TABLES
from common.settings import DbUrl

MYSQL_BASE = os.environ.get("BISECT_TEST_DB_URL", "mysql://root@127.0.0.1:3306/mysql")
MANTICORE_URL = os.environ.get("BISECT_TEST_MANTICORE_URL", "")
_counter = itertools.count()


def make_mysql_database() -> DbUrl:
    base = DbUrl.parse(MYSQL_BASE, "BISECT_TEST_DB_URL")
    return recreate_database(base.with_database(f"bisect_test_{os.getpid()}_{next(_counter)}"))


def drop_mysql_database(url: DbUrl) -> None:
    drop_database(url)


def reset_manticore(url: DbUrl) -> None:
    conn = pymysql.connect(host=url.host, port=url.port, user=url.user, password=url.password,
                           autocommit=True)
    try:
        with conn.cursor() as cur:
            for table in TABLES:
                cur.execute(f"DROP TABLE IF EXISTS {table.name}")
    finally:
        conn.close()


@pytest.fixture(params=["mysql", "manticore"])
def db_url(request: pytest.FixtureRequest) -> object:
    """A URL of an empty database of each dialect (Manticore only when configured)."""
    if request.param == "manticore":
        if not MANTICORE_URL:
            pytest.skip("BISECT_TEST_MANTICORE_URL is not set: no Manticore server to test on")
        url = DbUrl.parse(MANTICORE_URL, "BISECT_TEST_MANTICORE_URL")
        reset_manticore(url)
        yield url
        return
    url = make_mysql_database()
    yield url
    drop_mysql_database(url)


@pytest.fixture
async def repo(db_url: DbUrl) -> AsyncIterator[Repository]:
    db = Database(db_url, maxsize=20)
    repository = Repository(db)
    await repository.create_missing_tables()
    yield repository
    await db.close()


def url_string(url: DbUrl) -> str:
    """The URL as ``BISECT_DB_URL`` spells it, for services started as processes."""
    return url.to_url()
