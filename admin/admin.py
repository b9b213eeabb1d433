"""``bisect-admin``: database set-up and checks, and the demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Sequence

import pymysql

from admin.db_errors import BAD_DB_ERROR, DatabaseSetupError, error_code, explain
from common.db import Database
from common.errors import BisectError
from common.logging import configure_logging
from common.repository import Repository
from common.settings import DbUrl, Dialect, Env

# A command-line tool answers at once: no long reconnect backoff before saying what is wrong.
ADMIN_DB_ATTEMPTS = 2


def create_database(url: DbUrl) -> None:
    """``CREATE DATABASE`` for a MariaDB/MySQL URL whose database is missing."""
    name = url.database
    # DDL cannot bind a name: accept only plain ones (the URL comes from the operator).
    if not re.fullmatch(r"[A-Za-z0-9_$]{1,64}", name):
        raise DatabaseSetupError(f"BISECT_DB_URL: database name {name!r} is not a plain name "
                                 "(letters, digits, _ and $); create it yourself")
    try:
        conn = pymysql.connect(host=url.host, port=url.port, user=url.user,
                               password=url.password, autocommit=True, connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
        finally:
            conn.close()
    except pymysql.err.MySQLError as exc:
        detail = exc.args[1] if len(exc.args) > 1 else str(exc)
        raise DatabaseSetupError(
            f"database {name!r} does not exist and user {url.user!r} may not create it "
            f"({detail}): ask an administrator to run CREATE DATABASE {name}, or set "
            "BISECT_DB_URL to an existing database") from None


async def _init_db(repo: Repository) -> int:
    created = await repo.create_missing_tables()
    added = await repo.add_missing_columns()
    print(f"tables created: {', '.join(created) or 'none'}")
    print(f"columns added: {', '.join(added) or 'none'}")
    return 0


async def _check_db(repo: Repository, fix: bool) -> int:
    report = await repo.check_schema()
    # Coexistence with compass-ci: its tables in another layout, its bisect service still
    # using the bisect table.
    for line in await repo.schema_warnings():
        print(f"warning: {line}")
    missing_tables = report.pop("", [])
    for name in missing_tables:
        print(f"missing table: {name}")
    for table, columns in sorted(report.items()):
        print(f"missing columns in {table}: {', '.join(columns)}")
    if not missing_tables and not report:
        print(f"schema complete ({repo.dialect.value}, server {await repo.server_version()})")
        return 0
    if fix and not missing_tables:
        added = await repo.add_missing_columns()
        print(f"columns added: {', '.join(added) or 'none'}")
        return 0
    return 1


async def _run_once(url: DbUrl, args: argparse.Namespace) -> int:
    db = Database(url, maxsize=2, attempts=ADMIN_DB_ATTEMPTS)
    repo = Repository(db)
    try:
        if args.command == "init-db":
            return await _init_db(repo)
        if args.command == "check-db":
            return await _check_db(repo, args.add_missing)
        raise AssertionError(args.command)
    finally:
        await db.close()


async def _run(url: DbUrl, args: argparse.Namespace) -> int:
    try:
        return await _run_once(url, args)
    except pymysql.err.MySQLError as exc:
        missing = error_code(exc) == BAD_DB_ERROR and url.dialect is Dialect.MYSQL
        if not (missing and args.command == "init-db"):
            raise
    create_database(url)
    print(f"database created: {url.database}")
    return await _run_once(url, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bisect-admin",
        description="Administer bisect-task. The database is BISECT_DB_URL "
                    "(manticore://host:9306 or mysql://user:pass@host:3306/db).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init-db", help="create missing tables and columns (safe to run twice)")
    check = sub.add_parser("check-db", help="report missing tables or columns")
    check.add_argument("--add-missing", action="store_true",
                       help="add missing columns to existing tables")
    sub.add_parser("demo", help="run the whole pipeline on this machine (see demo --help)",
                   add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from admin.demo import main_demo

        return main_demo(argv[1:])
    args = build_parser().parse_args(argv)
    # Reconnect warnings would bury the one line that says what is wrong.
    configure_logging("admin", os.environ.get("BISECT_ADMIN_LOG_LEVEL", "error"))
    url: DbUrl | None = None
    try:
        url = Env().db_url()
        return asyncio.run(_run(url, args))
    except (BisectError, pymysql.err.MySQLError, OSError) as exc:
        print(f"bisect-admin: {explain(exc, url) or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
