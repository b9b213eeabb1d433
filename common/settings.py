"""Environment-variable parsing shared by the services' frozen settings.

Each service has its own frozen dataclass (``producer.settings``, ``consumer.settings``);
this module holds the database URL and the typed readers that name the variable on error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from urllib.parse import quote, unquote, urlsplit

from common.errors import ConfigError

DEFAULT_DB_URL = "manticore://127.0.0.1:9306"
MANTICORE_DEFAULT_PORT = 9306
MYSQL_DEFAULT_PORT = 3306


class Dialect(Enum):
    MANTICORE = "manticore"
    MYSQL = "mysql"


@dataclass(frozen=True)
class DbUrl:
    """A parsed ``BISECT_DB_URL``: the scheme chooses the SQL dialect."""

    dialect: Dialect
    host: str
    port: int
    user: str
    password: str
    database: str

    @classmethod
    def parse(cls, url: str, variable: str = "BISECT_DB_URL") -> DbUrl:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"{variable}: not a valid URL ({exc})") from exc
        scheme = parts.scheme.lower()
        if scheme == "manticore":
            dialect = Dialect.MANTICORE
            default_port = MANTICORE_DEFAULT_PORT
        elif scheme in ("mysql", "mariadb"):
            dialect = Dialect.MYSQL
            default_port = MYSQL_DEFAULT_PORT
        else:
            raise ConfigError(
                f"{variable}: scheme must be manticore:// or mysql://, got {url.split(':')[0]!r}"
            )
        if not parts.hostname:
            raise ConfigError(f"{variable}: the URL names no host")
        database = unquote(parts.path.lstrip("/"))
        if dialect is Dialect.MYSQL and not database:
            raise ConfigError(f"{variable}: mysql:// URLs need a database name (mysql://u@h/db)")
        if dialect is Dialect.MANTICORE and database:
            # Manticore has one namespace of tables; a path would be silently ignored.
            raise ConfigError(f"{variable}: manticore:// URLs take no database name")
        return cls(
            dialect=dialect,
            host=parts.hostname,
            port=port or default_port,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=database,
        )

    def redacted(self) -> str:
        """The URL without its password, for logs and error messages."""
        auth = f"{self.user}@" if self.user else ""
        path = f"/{self.database}" if self.database else ""
        return f"{self.dialect.value}://{auth}{self.host}:{self.port}{path}"

    def to_url(self) -> str:
        """The URL as ``BISECT_DB_URL`` spells it, password included (for child processes)."""
        auth = quote(self.user, safe="") + (f":{quote(self.password, safe='')}"
                                            if self.password else "")
        path = f"/{quote(self.database, safe='')}" if self.database else ""
        return f"{self.dialect.value}://{auth}@{self.host}:{self.port}{path}"

    def with_database(self, database: str) -> DbUrl:
        return DbUrl(self.dialect, self.host, self.port, self.user, self.password, database)


class Env:
    """Typed readers over an environment mapping; every error names the variable."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        return None if value is None or value.strip() == "" else value.strip()

    def get_str(self, name: str, default: str) -> str:
        value = self.raw(name)
        return default if value is None else value

    def get_int(self, name: str, default: int, *, minimum: int | None = None,
            maximum: int | None = None) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
        if minimum is not None and number < minimum:
            raise ConfigError(f"{name}: must be at least {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise ConfigError(f"{name}: must be at most {maximum}, got {number}")
        return number

    def get_float(self, name: str, default: float, *, minimum: float | None = None,
              maximum: float | None = None) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if number != number:  # NaN
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        if minimum is not None and number < minimum:
            raise ConfigError(f"{name}: must be at least {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise ConfigError(f"{name}: must be at most {maximum}, got {number}")
        return number

    def get_bool(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")

    def get_list(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A comma-separated list; empty items are dropped."""
        value = self.raw(name)
        if value is None:
            return default
        return tuple(item.strip() for item in value.split(",") if item.strip())

    def db_url(self, name: str = "BISECT_DB_URL") -> DbUrl:
        return DbUrl.parse(self.get_str(name, DEFAULT_DB_URL), name)

    def secrets(self, name: str, file_name: str) -> frozenset[str]:
        """Tokens from a comma-separated variable and/or a file of one token a line."""
        tokens = set(self.get_list(name))
        path = self.raw(file_name)
        if path is not None:
            try:
                with open(path, encoding="utf-8") as handle:
                    for line in handle:
                        line = line.strip()
                        if line and not line.startswith("#"):
                            tokens.add(line)
            except OSError as exc:
                raise ConfigError(f"{file_name}: cannot read {path!r} ({exc.strerror})") from None
        return frozenset(tokens)
