from __future__ import annotations

import pytest

from common import ids
from common.errors import ConfigError
from common.queries import parse
from common.settings import DbUrl, Dialect, Env


def test_db_url_scheme_chooses_dialect() -> None:
    assert DbUrl.parse("manticore://m:9306").dialect is Dialect.MANTICORE
    url = DbUrl.parse("mysql://u:p%40ss@h:3307/db")
    assert (url.dialect, url.user, url.password, url.port, url.database) == (
        Dialect.MYSQL, "u", "p@ss", 3307, "db")
    assert "p@ss" not in url.redacted()
    assert DbUrl.parse("manticore://m").port == 9306


@pytest.mark.parametrize("bad", ["postgres://h/db", "mysql://h", "manticore://h/db", "mysql:///db",
                                 "mysql://h:notaport/db"])
def test_bad_db_urls_name_the_variable(bad: str) -> None:
    with pytest.raises(ConfigError, match="BISECT_DB_URL"):
        Env({"BISECT_DB_URL": bad}).db_url()


def test_env_readers_name_the_variable() -> None:
    env = Env({"BISECT_X": "abc", "BISECT_N": "5", "BISECT_B": "maybe"})
    with pytest.raises(ConfigError, match="BISECT_X: expected an integer"):
        env.get_int("BISECT_X", 1)
    with pytest.raises(ConfigError, match="BISECT_N: must be at most 3"):
        env.get_int("BISECT_N", 1, maximum=3)
    with pytest.raises(ConfigError, match="BISECT_B"):
        env.get_bool("BISECT_B", False)
    assert env.get_int("BISECT_MISSING", 7) == 7
    assert Env({"L": " a, ,b "}).get_list("L") == ("a", "b")


def test_task_ids_are_stable_positive_63_bit() -> None:
    first = ids.task_id("123", "last_state.test.pkgbuild.exit_code.1")
    assert first == ids.task_id("123", "last_state.test.pkgbuild.exit_code.1")
    assert 0 < first < 2**63
    assert first != ids.task_id("123", "last_state.test.pkgbuild.exit_code.2")
    assert first != ids.task_id("123", "last_state.test.pkgbuild.exit_code.1", probe=1)
    # The separator keeps ("1", "23x") and ("12", "3x") apart.
    assert ids.task_id("1", "23x") != ids.task_id("12", "3x")


def test_query_file_dialect_blocks() -> None:
    text = ("-- name: a\nSELECT 1\n-- name: a [manticore]\nSELECT 2\n"
            "-- name: b\nSELECT {bisect_columns}\n")
    mysql = parse(text, Dialect.MYSQL)
    manticore = parse(text, Dialect.MANTICORE)
    assert mysql["a"] == "SELECT 1" and manticore["a"] == "SELECT 2"
    assert mysql["b"].startswith("SELECT id, bad_job_id")
