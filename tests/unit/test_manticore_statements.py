"""Every statement the services send to Manticore keeps to what its core daemon parses
(shared/manticore.md): checked on the text, since no Manticore server runs in CI."""

from __future__ import annotations

import re

import pytest

from common.queries import load
from common.settings import Dialect

STATEMENTS = load(Dialect.MANTICORE)
_ORDER_KEY = re.compile(r"^\s*[\w.]+\s+(ASC|DESC)\s*$", re.IGNORECASE)


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_statement_parses_on_the_core_daemon(name: str) -> None:
    sql = " ".join(STATEMENTS[name].split())
    upper = sql.upper()
    for forbidden in ("SHOW VARIABLES", " LIKE ", "FOR UPDATE", "JSON_EXTRACT", "JSON_UNQUOTE",
                      "UNIX_TIMESTAMP", "AUTO_INCREMENT", "ON DUPLICATE"):
        assert forbidden not in upper, f"{name}: {forbidden.strip()} is not Manticore SQL"
    assert not re.search(r"(?<!IS )NOT NULL", upper), f"{name}: NOT NULL is DDL Manticore lacks"
    assert "NULL)" not in upper.replace("IS NULL)", "").replace("IS NOT NULL)", ""), name
    if upper.startswith("SELECT") and " FROM " in upper and "COUNT(*)" not in upper:
        assert " ORDER BY " in upper, f"{name}: no ORDER BY (the order would be arbitrary)"
        order = re.search(r" ORDER BY (.+?) LIMIT ", sql, re.IGNORECASE)
        assert order is not None, f"{name}: needs a LIMIT after ORDER BY (20 rows by default)"
        for key in order.group(1).split(","):
            assert _ORDER_KEY.match(key), f"{name}: ORDER BY key {key!r} needs ASC or DESC"
        limit = re.search(r" LIMIT (\d+)\b", sql)
        assert limit is None or int(limit.group(1)) <= 1000, f"{name}: LIMIT above 1000"


def test_every_match_is_a_bound_parameter() -> None:
    for name, sql in STATEMENTS.items():
        for argument in re.findall(r"MATCH\((%\(\w+\)s|[^)]*)\)", sql):
            assert argument == "%(match)s", f"{name}: MATCH({argument}) must be bound"
