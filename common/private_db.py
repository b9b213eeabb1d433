"""A private MariaDB server in a temporary folder: for the demo (no configuration needed) and
for fault tests that stop and restart the database without touching a shared server."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common.errors import BisectError
from common.settings import DbUrl

MARIADBD_CANDIDATES = ("/usr/sbin/mariadbd", "/usr/sbin/mysqld")
INSTALL_DB_CANDIDATES = ("mariadb-install-db", "mysql_install_db")
START_TIMEOUT_S = 60.0


class PrivateDatabaseError(BisectError):
    """The private server cannot be set up; the message says what to install."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _find(candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        path = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK)
                                      else None)
        if path:
            return path
    return None


class PrivateMariaDB:
    """``start()`` initializes a data directory and runs ``mariadbd`` on a free port;
    ``stop()``/``start()`` again keep the data; ``close()`` removes everything."""

    def __init__(self, root: Path | None = None, port: int | None = None) -> None:
        self.mariadbd = _find(MARIADBD_CANDIDATES)
        self.install_db = _find(INSTALL_DB_CANDIDATES)
        if self.mariadbd is None or self.install_db is None:
            raise PrivateDatabaseError(
                "no MariaDB server found: install it (Debian/Ubuntu: apt-get install "
                "mariadb-server) or set BISECT_DB_URL to a server you have")
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="bisect-db-"))
        self.port = port or free_port()
        self.datadir = self.root / "data"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/bisect"

    def _user_args(self) -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []

    def _initialize(self) -> None:
        if self.datadir.exists():
            return
        result = subprocess.run(
            [str(self.install_db), "--no-defaults", f"--datadir={self.datadir}",
             "--auth-root-authentication-method=normal", "--skip-test-db",
             *self._user_args()],
            capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise PrivateDatabaseError(f"mariadb-install-db failed: {result.stderr[-500:]}")

    def start(self) -> None:
        self._initialize()
        log = open(self.root / "mariadbd.log", "ab")
        self.process = subprocess.Popen(
            [str(self.mariadbd), "--no-defaults", f"--datadir={self.datadir}",
             f"--port={self.port}", "--bind-address=127.0.0.1",
             f"--socket={self.root / 'mysqld.sock'}", f"--pid-file={self.root / 'mysqld.pid'}",
             "--skip-grant-tables", "--innodb-buffer-pool-size=64M",
             "--innodb-flush-log-at-trx-commit=2", *self._user_args()],
            stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrivateDatabaseError(
                    f"mariadbd exited with {self.process.returncode}; see "
                    f"{self.root / 'mariadbd.log'}")
            if self._accepts_queries():
                return
            time.sleep(0.1)
        raise PrivateDatabaseError(f"mariadbd did not start within {START_TIMEOUT_S:.0f} s")

    def _accepts_queries(self) -> bool:
        import pymysql

        try:
            conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root",
                                   connect_timeout=1, autocommit=True)
        except pymysql.err.MySQLError:
            return False
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE DATABASE IF NOT EXISTS bisect CHARACTER SET utf8mb4")
        finally:
            conn.close()
        return True

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def close(self) -> None:
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivateMariaDB:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _server_connection(url: DbUrl) -> Any:
    import pymysql

    return pymysql.connect(host=url.host, port=url.port, user=url.user, password=url.password,
                           autocommit=True, charset="utf8mb4")


def _check_database_name(name: str) -> str:
    # Names are ours (test or benchmark prefixes), but DDL cannot bind them: insist.
    if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", name):
        raise ValueError(f"not a plain database name: {name!r}")
    return name


def recreate_database(url: DbUrl) -> DbUrl:
    """Drop and create ``url``'s database (MariaDB/MySQL), empty; returns ``url``."""
    name = _check_database_name(url.database)
    conn = _server_connection(url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    return url


def drop_database(url: DbUrl) -> None:
    name = _check_database_name(url.database)
    conn = _server_connection(url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()
