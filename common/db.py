"""The connection pool: aiomysql with autocommit on, reconnect with backoff.

Only ``common.repository`` talks to this module; it hands over statement text and bound
parameters, never SQL built from values.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from typing import Any

import aiomysql
import pymysql
import structlog

from common.errors import DatabaseUnavailable
from common.settings import DbUrl, Dialect

log = structlog.get_logger(__name__)

# Client-side error codes that mean "the server is gone", not "your SQL is wrong".
_CONNECTION_ERRORS = frozenset({2003, 2006, 2013, 2014, 2045, 2055, 1040, 1053, 1927})
CONNECT_TIMEOUT_S = 5.0
DEFAULT_ATTEMPTS = 3
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 2.0

Params = Mapping[str, Any] | Sequence[Any] | None


def expand_lists(sql: str, params: Params) -> tuple[str, Params]:
    """Turn ``IN %(ids)s`` with a tuple value into ``IN (%(ids_0)s, %(ids_1)s, ...)``.

    PyMySQL no longer escapes sequences itself; expanding keeps every element bound.
    """
    if not isinstance(params, Mapping) or not any(
            isinstance(v, tuple | list) for v in params.values()):
        return sql, params
    flat: dict[str, Any] = {}
    for name, value in params.items():
        if isinstance(value, tuple | list):
            if not value:
                raise ValueError(f"empty list bound to {name!r}")
            names = [f"{name}__{i}" for i in range(len(value))]
            flat.update(zip(names, value, strict=True))
            sql = sql.replace(f"%({name})s", "(" + ", ".join(f"%({n})s" for n in names) + ")")
        else:
            flat[name] = value
    return sql, flat


def is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError, asyncio.IncompleteReadError)):
        return True
    if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError):
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        return code in _CONNECTION_ERRORS or code == 0
    return False


class Database:
    """A lazily created aiomysql pool; every call retries connection failures with backoff
    and raises :class:`DatabaseUnavailable` when the server stays unreachable."""

    def __init__(self, url: DbUrl, *, minsize: int = 1, maxsize: int = 10,
                 attempts: int = DEFAULT_ATTEMPTS) -> None:
        self.url = url
        self.dialect: Dialect = url.dialect
        self._minsize = minsize
        self._maxsize = maxsize
        self._attempts = attempts
        self._pool: aiomysql.Pool | None = None
        self._pool_lock = asyncio.Lock()

    async def _get_pool(self) -> aiomysql.Pool:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._pool is None:
                kwargs: dict[str, Any] = {
                    "host": self.url.host,
                    "port": self.url.port,
                    "user": self.url.user,
                    "password": self.url.password,
                    "autocommit": True,
                    "charset": "utf8mb4",
                    "connect_timeout": CONNECT_TIMEOUT_S,
                    "minsize": self._minsize,
                    "maxsize": self._maxsize,
                    # Recycle idle connections before server-side timeouts cut them.
                    "pool_recycle": 3600,
                }
                if self.url.database:
                    kwargs["db"] = self.url.database
                self._pool = await aiomysql.create_pool(**kwargs)
            return self._pool

    async def _run(self, sql: str, params: Params, *, many: bool = False,
                   fetch: bool = False) -> tuple[int, list[dict[str, Any]], int]:
        last: BaseException | None = None
        for attempt in range(self._attempts):
            try:
                pool = await self._get_pool()
                async with pool.acquire() as conn, conn.cursor(aiomysql.DictCursor) as cur:
                    if many:
                        await cur.executemany(sql, params)
                    else:
                        await cur.execute(*expand_lists(sql, params))
                    rows = list(await cur.fetchall()) if fetch else []
                    return cur.rowcount, rows, cur.lastrowid or 0
            except Exception as exc:
                if not is_connection_error(exc) and not isinstance(exc, OSError):
                    raise
                last = exc
                await self._drop_pool()
                delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)
                log.warning("db_retry", attempt=attempt + 1, error=str(exc),
                            db=self.url.redacted())
                await asyncio.sleep(delay * (0.5 + random.random()))
        raise DatabaseUnavailable(
            f"database {self.url.redacted()} unreachable: {last}"
        ) from last

    async def _drop_pool(self) -> None:
        """Forget a pool whose connections may all be dead; the next call makes a new one."""
        async with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()
            try:
                await asyncio.wait_for(pool.wait_closed(), 1.0)
            except Exception:
                log.debug("db_pool_close_failed")

    async def fetch(self, sql: str, params: Params = None) -> list[dict[str, Any]]:
        return (await self._run(sql, params, fetch=True))[1]

    async def fetch_one(self, sql: str, params: Params = None) -> dict[str, Any] | None:
        rows = await self.fetch(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Params = None) -> int:
        """Run one statement; returns the affected (matched) row count."""
        return (await self._run(sql, params))[0]

    async def execute_many(self, sql: str, rows: Sequence[Any]) -> int:
        if not rows:
            return 0
        return (await self._run(sql, rows, many=True))[0]

    async def ping(self) -> None:
        await self.fetch("SELECT 1 AS ok")

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            await pool.wait_closed()
