"""``bisect-admin``: database set-up and checks (and, later, the demo)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from common.db import Database
from common.errors import BisectError
from common.repository import Repository
from common.settings import Env


async def _init_db(repo: Repository) -> int:
    created = await repo.create_missing_tables()
    added = await repo.add_missing_columns()
    print(f"tables created: {', '.join(created) or 'none'}")
    print(f"columns added: {', '.join(added) or 'none'}")
    return 0


async def _check_db(repo: Repository, fix: bool) -> int:
    report = await repo.check_schema()
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


async def _run(args: argparse.Namespace) -> int:
    db = Database(Env().db_url(), maxsize=2)
    repo = Repository(db)
    try:
        if args.command == "init-db":
            return await _init_db(repo)
        if args.command == "check-db":
            return await _check_db(repo, args.add_missing)
        raise AssertionError(args.command)
    finally:
        await db.close()


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
    try:
        return asyncio.run(_run(args))
    except BisectError as exc:
        print(f"bisect-admin: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
