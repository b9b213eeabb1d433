"""`bisect-admin demo` end to end: real services, real database, the known culprit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from common.settings import DbUrl
from tests.conftest import url_string

pytestmark = pytest.mark.acceptance


def _run_demo(env: dict[str, str], temp: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "admin.admin", "demo", "--commits", "80"],
                            env={**env, "TMPDIR": str(temp)}, capture_output=True, text=True,
                            timeout=240, check=False)
    assert list(temp.iterdir()) == []  # nothing left in the temp directory
    return result


def _check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    known = re.search(r"known culprit ([0-9a-f]{40}); found ([0-9a-f]{40}): MATCH", result.stdout)
    assert known is not None, result.stdout[-3000:]
    assert known.group(1) == known.group(2)
    assert "first bad commit" in result.stdout
    assert re.search(r"API token: [0-9a-f]{32}", result.stdout)
    # No dashboard URL that is dead by the time it is read: the demo says it stopped.
    assert "/dashboard/tasks/" not in result.stdout
    assert "the services stop now; `bisect-admin demo --keep-running`" in result.stdout
    assert re.search(r"producer stopped \(exit 0\)", result.stdout)


@pytest.mark.timeout(300)
def test_demo_on_the_configured_database(db_url: DbUrl, tmp_path: Path) -> None:
    if db_url.dialect.value != "mysql":
        pytest.skip("the demo test runs on MariaDB")
    _check(_run_demo({**os.environ, "BISECT_DB_URL": url_string(db_url)}, tmp_path))


@pytest.mark.timeout(300)
def test_demo_starts_a_private_database_when_none_is_configured(tmp_path: Path) -> None:
    if not os.path.exists("/usr/sbin/mariadbd"):
        pytest.skip("no mariadbd installed: the demo would print what to install")
    env = {k: v for k, v in os.environ.items() if k != "BISECT_DB_URL"}
    result = _run_demo(env, tmp_path)
    _check(result)
    assert "starting a private MariaDB server" in result.stdout


def test_demo_says_in_one_line_when_manticore_is_not_reachable(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "admin.admin", "demo", "--db", "manticore", "--db-url",
         "manticore://127.0.0.1:1"], env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "no Manticore reachable at 127.0.0.1:1" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("url", "expected"), [
    ("mysql://root:wrong-password@127.0.0.1:3306/x", "fix the user and password in "
                                                     "BISECT_DB_URL"),
    ("mysql://root@127.0.0.1:1/x", "cannot reach 127.0.0.1:1 (BISECT_DB_URL="),
    ("postgres://x", "BISECT_DB_URL: scheme must be"),
])
def test_database_errors_are_one_line_naming_the_variable(url: str, expected: str) -> None:
    for command in (["check-db"], ["init-db"], ["demo"]):
        result = subprocess.run([sys.executable, "-m", "admin.admin", *command],
                                env={**os.environ, "BISECT_DB_URL": url},
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (command, result.stderr)
