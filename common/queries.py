"""Loads the named statements of ``queries.sql`` for one dialect."""

from __future__ import annotations

import re
from importlib import resources

from common.compass_job import JOB_COLUMNS
from common.schema import TABLES
from common.settings import Dialect

_HEADER = re.compile(r"^-- name: (\w+)(?: \[(mysql|manticore)\])?\s*$")


def _expansions() -> dict[str, str]:
    values: dict[str, str] = {}
    for table in TABLES:
        names = ("id", *table.column_names())
        values[f"{table.name}_columns"] = ", ".join(names)
        values[f"{table.name}_values"] = ", ".join(f"%({name})s" for name in names)
    values["job_read_columns"] = ", ".join(JOB_COLUMNS)
    return values


def parse(text: str, dialect: Dialect) -> dict[str, str]:
    """Named blocks of ``text``; a block tagged with ``dialect`` wins over an untagged one."""
    generic: dict[str, str] = {}
    specific: dict[str, str] = {}
    current: tuple[str, str | None] | None = None
    lines: list[str] = []

    def flush() -> None:
        if current is None:
            return
        name, tag = current
        body = "\n".join(line for line in lines if not line.startswith("--")).strip()
        if tag is None:
            generic[name] = body
        elif tag == dialect.value:
            specific[name] = body

    for line in text.splitlines():
        match = _HEADER.match(line)
        if match:
            flush()
            current = (match.group(1), match.group(2))
            lines = []
        elif current is not None:
            lines.append(line)
    flush()
    merged = {**generic, **specific}
    expansions = _expansions()
    for name, body in merged.items():
        for key, value in expansions.items():
            body = body.replace("{" + key + "}", value)
        merged[name] = body
    return merged


def load(dialect: Dialect) -> dict[str, str]:
    text = resources.files("common").joinpath("queries.sql").read_text(encoding="utf-8")
    return parse(text, dialect)
