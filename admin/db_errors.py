"""Database failures as one line a newcomer can act on: what went wrong, the variable that
chose the database (``BISECT_DB_URL``) and the fix. No traceback reaches the terminal."""

from __future__ import annotations

import pymysql

from common.errors import BisectError, ConfigError, DatabaseUnavailable, SchemaError
from common.settings import DbUrl

VARIABLE = "BISECT_DB_URL"
BAD_DB_ERROR = 1049  # Unknown database
ACCESS_DENIED_ERROR = 1045  # wrong user or password
ACCESS_DENIED_NO_PASSWORD_ERROR = 1698  # a user that exists only for socket logins
DBACCESS_DENIED_ERROR = 1044  # the user may not use (or create) that database
# The client's "server gone or never there" numbers (can't connect, lost connection, ...).
CONNECTION_CODES = frozenset({0, 2003, 2005, 2006, 2013})


class DatabaseSetupError(BisectError):
    """A database problem already phrased for the terminal (one line)."""


def error_code(exc: BaseException) -> int | None:
    """The server's error number of a pymysql error, also when it is the cause of another."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, pymysql.err.MySQLError) and seen.args and isinstance(
                seen.args[0], int):
            return int(seen.args[0])
        seen = seen.__cause__
    return None


def explain(exc: BaseException, url: DbUrl | None) -> str | None:
    """One line for a database failure, or None when ``exc`` is not one."""
    if isinstance(exc, DatabaseSetupError | ConfigError):
        return str(exc)
    where = f"{VARIABLE}={url.redacted()}" if url is not None else VARIABLE
    code = error_code(exc)
    if code == BAD_DB_ERROR and url is not None:
        return (f"database {url.database!r} does not exist ({where}): run `bisect-admin "
                f"init-db` to create it, or set {VARIABLE} to an existing database")
    if code in (ACCESS_DENIED_ERROR, ACCESS_DENIED_NO_PASSWORD_ERROR):
        user = url.user if url is not None else "?"
        return (f"access denied for user {user!r} ({where}): fix the user and password in "
                f"{VARIABLE} (mysql://user:password@host:3306/database)")
    if code == DBACCESS_DENIED_ERROR:
        name = url.database if url is not None else "?"
        return (f"the user may not use database {name!r} ({where}): GRANT it access, or set "
                f"{VARIABLE} to a database it may use")
    if isinstance(exc, DatabaseUnavailable | OSError) or code in CONNECTION_CODES:
        host = f"{url.host}:{url.port}" if url is not None else "the database"
        return (f"cannot reach {host} ({where}): start the database server or fix "
                f"{VARIABLE}; unset it to let `bisect-admin demo` start a private MariaDB")
    if isinstance(exc, SchemaError):
        return f"{exc} ({where})"
    if isinstance(exc, pymysql.err.MySQLError):
        detail = exc.args[1] if len(exc.args) > 1 else exc
        return f"database error {code or ''} ({where}): {detail}".replace("  ", " ")
    return None
