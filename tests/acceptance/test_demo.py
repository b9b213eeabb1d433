"""`bisect-admin demo` end to end: real services, real database, the known culprit."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from common.settings import DbUrl
from tests.conftest import url_string

pytestmark = pytest.mark.acceptance


def _run_demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "admin.admin", "demo", "--commits", "80"],
                          env=env, capture_output=True, text=True, timeout=240, check=False)


def _check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    known = re.search(r"known culprit ([0-9a-f]{40}); found ([0-9a-f]{40}): MATCH", result.stdout)
    assert known is not None, result.stdout[-3000:]
    assert known.group(1) == known.group(2)
    assert "first bad commit" in result.stdout
    assert "/dashboard/tasks/" in result.stdout
    assert re.search(r"producer stopped \(exit 0\)", result.stdout)


@pytest.mark.timeout(300)
def test_demo_on_the_configured_database(db_url: DbUrl) -> None:
    if db_url.dialect.value != "mysql":
        pytest.skip("the demo test runs on MariaDB")
    _check(_run_demo({**os.environ, "BISECT_DB_URL": url_string(db_url)}))


@pytest.mark.timeout(300)
def test_demo_starts_a_private_database_when_none_is_configured() -> None:
    if not os.path.exists("/usr/sbin/mariadbd"):
        pytest.skip("no mariadbd installed: the demo would print what to install")
    env = {k: v for k, v in os.environ.items() if k != "BISECT_DB_URL"}
    result = _run_demo(env)
    _check(result)
    assert "starting a private MariaDB server" in result.stdout
