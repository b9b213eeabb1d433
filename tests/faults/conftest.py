"""Fixtures of the fault suite: a cluster on the test's own database, always torn down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from common.repository import Repository
from common.settings import DbUrl
from tests.acceptance.support import Cluster
from tests.conftest import url_string


@pytest.fixture
def cluster(repo: Repository, db_url: DbUrl, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster on the test's MariaDB database (``repo`` made the tables)."""
    if db_url.dialect.value != "mysql":
        pytest.skip("the fault suite runs on MariaDB (it stops and fills servers)")
    cluster = Cluster(tmp_path, url_string(db_url))
    try:
        yield cluster
    finally:
        cluster.kill_all()
