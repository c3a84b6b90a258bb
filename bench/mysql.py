"""MySQL clients through a forward: sysbench OLTP runs and a new-connection loop (pymysql).

The account and schema are the sandbox's (bastion_tray/sandbox/mariadb.py); sysbench's tables
are prepared once per run, straight to the server.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass

from bench.net import require_loopback

TABLES = 4
TABLE_SIZE = 10_000
TESTS = ("oltp_point_select", "oltp_read_only")
THREADS = (1, 8, 32)


@dataclass(frozen=True)
class Account:
    user: str
    password: str
    database: str


@dataclass(frozen=True)
class Run:
    qps: float
    queries: int


def available() -> bool:
    return shutil.which("sysbench") is not None


def _sysbench(test: str, host: str, port: int, account: Account, *extra: str,
              timeout: float) -> str:
    args = ["sysbench", test, f"--mysql-host={require_loopback(host)}", f"--mysql-port={port}",
            f"--mysql-user={account.user}", f"--mysql-password={account.password}",
            f"--mysql-db={account.database}", f"--tables={TABLES}",
            f"--table-size={TABLE_SIZE}", "--mysql-ssl=off", *extra]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if proc.returncode:
        raise RuntimeError(f"sysbench {test} {' '.join(extra)} failed: "
                           f"{(proc.stdout + proc.stderr).strip()[-800:]}")
    return proc.stdout


def prepare(host: str, port: int, account: Account) -> None:
    """Create and fill the tables once (oltp_read_only's prepare serves both tests), then
    warm the server's caches so the first contender does not pay for a cold start."""
    _sysbench("oltp_read_only", host, port, account, "--threads=4", "prepare", timeout=300)
    for test in TESTS:
        run(test, host, port, account, threads=4, seconds=2)


def run(test: str, host: str, port: int, account: Account, *, threads: int,
        seconds: float) -> Run:
    out = _sysbench(test, host, port, account, f"--threads={threads}",
                    f"--time={seconds:g}", "--events=0", "--report-interval=0", "run",
                    timeout=seconds + 120)
    found = re.search(r"queries:\s+(\d+)\s+\((\d+(?:\.\d+)?) per sec", out)
    if not found:
        raise RuntimeError(f"sysbench {test}: no 'queries:' line in {out[-500:]!r}")
    return Run(float(found[2]), int(found[1]))


def new_connections_per_s(host: str, port: int, account: Account, seconds: float) -> float:
    """connect + SELECT 1 + close, one after another, for `seconds`: connections per second.
    No TLS (the sandbox server has none): pymysql would otherwise build an SSL context per
    connect, 18 ms of CPU that would hide the tunnel's cost."""
    import pymysql

    done, started = 0, time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        conn = pymysql.connect(host=require_loopback(host), port=port, user=account.user,
                               password=account.password, database=account.database,
                               connect_timeout=10, ssl_disabled=True)
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchall()
        finally:
            conn.close()
        done += 1
    return done / (time.perf_counter() - started)
