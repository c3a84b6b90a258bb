"""A real MariaDB server standing in for RDS, on its own loopback address.

A fresh datadir per sandbox: mariadb-install-db with small InnoDB files takes about half a
second here, so a cached pristine datadir would save little and could go stale.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bastion_tray.sandbox.errors import SandboxError
from bastion_tray.sandbox.prereqs import find_tool
from bastion_tray.sandbox.procs import ProcessSet, wait_for

log = logging.getLogger(__name__)

DB_NAME = "appdb"
DB_USER = "app"
# what a test can SELECT to prove it reached the real server
GREETING = "hello from the sandbox database"

# small InnoDB files (the default redo log is 96 MB) and no DNS: there is no network to ask
_SERVER_OPTIONS = ("--innodb-log-file-size=8M", "--innodb-buffer-pool-size=16M",
                   "--skip-name-resolve")
_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes


@dataclass(frozen=True)
class Database:
    host: str
    port: int
    name: str
    user: str
    password: str
    socket: Path  # root over the unix socket, for setup and inspection


def _tool(*names: str) -> str:
    found = find_tool(*names)
    if found is None:
        raise SandboxError(f"{names[0]} not found; install the mariadb-server and mariadb-client "
                           "packages")
    return found


class MariaDB:
    """Start with `start()`; `close()` removes the short socket dir when one was needed."""

    def __init__(self, state_dir: Path, procs: ProcessSet) -> None:
        self._dir = state_dir / "mariadb"
        self._procs = procs
        self._socket_dir: str | None = None
        self._as_root = os.geteuid() == 0

    def _socket_path(self) -> Path:
        path = self._dir / "mysqld.sock"
        if len(str(path)) <= _SOCKET_PATH_MAX:
            return path
        self._socket_dir = tempfile.mkdtemp(prefix="bt-sandbox-db-")
        return Path(self._socket_dir) / "mysqld.sock"

    def _user_option(self) -> list[str]:
        # mariadbd refuses to run as root unless told so explicitly
        return ["--user=root"] if self._as_root else []

    def start(self, host: str, port: int, timeout: float = 30.0) -> Database:
        datadir = self._dir / "data"
        datadir.mkdir(parents=True, exist_ok=True)
        error_log = self._dir / "mariadbd.err"
        # its own temp dir: in the shared /tmp, whatever cleans up there (another run, a test's
        # teardown) can take mariadb-install-db's temporary tables from under it
        tmpdir = self._dir / "tmp"
        tmpdir.mkdir(parents=True, exist_ok=True)
        install = subprocess.run(
            [_tool("mariadb-install-db", "mysql_install_db"), "--no-defaults",
             f"--datadir={datadir}", f"--tmpdir={tmpdir}",
             "--auth-root-authentication-method=normal",
             "--skip-test-db", *self._user_option(), *_SERVER_OPTIONS],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        if install.returncode != 0:
            raise SandboxError(f"mariadb-install-db failed: {install.stderr.strip()[-2000:]}")

        sock = self._socket_path()
        argv = [_tool("mariadbd", "mysqld"), "--no-defaults", f"--datadir={datadir}",
                f"--tmpdir={tmpdir}", f"--socket={sock}", f"--bind-address={host}",
                f"--port={port}", "--skip-networking=0", f"--pid-file={self._dir / 'mariadbd.pid'}",
                f"--log-error={error_log}", *self._user_option(), *_SERVER_OPTIONS]
        proc = self._procs.spawn("mariadbd", argv, log_file=self._dir / "mariadbd.out")

        def ready() -> bool:
            if proc.poll() is not None:
                raise SandboxError(f"mariadbd exited with {proc.returncode}; see {error_log}")
            return self._sql(sock, "SELECT 1", check=False).returncode == 0

        if not wait_for(ready, timeout=timeout, interval=0.05):
            raise SandboxError(f"mariadbd did not accept connections in {timeout:.0f}s; "
                               f"see {error_log}")
        password = secrets.token_hex(16)
        self._sql(sock, _provisioning_sql(password))
        log.info("[sandbox db=%s] MariaDB on %s:%d", DB_NAME, host, port)
        return Database(host, port, DB_NAME, DB_USER, password, sock)

    def _sql(self, sock: Path, sql: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [_tool("mariadb", "mysql"), "--no-defaults", f"--socket={sock}", "--user=root",
             "--batch"], input=sql, capture_output=True, text=True, timeout=30)
        if check and result.returncode != 0:
            raise SandboxError(f"MariaDB setup SQL failed: {result.stderr.strip()}")
        return result

    def close(self) -> None:
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None


def _provisioning_sql(password: str) -> str:
    # the password is hex, so it needs no quoting beyond the literal's own quotes
    return f"""
CREATE DATABASE {DB_NAME};
CREATE USER '{DB_USER}'@'%' IDENTIFIED BY '{password}';
GRANT ALL PRIVILEGES ON {DB_NAME}.* TO '{DB_USER}'@'%';
CREATE TABLE {DB_NAME}.greetings (id INT PRIMARY KEY, message VARCHAR(200) NOT NULL);
INSERT INTO {DB_NAME}.greetings VALUES (1, '{GREETING}');
"""
