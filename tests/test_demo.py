"""`bastion-tray demo` headless, as CI runs it: it starts, serves a query through the
forward (starting the bastion on demand), and Ctrl-C tears it all down with no stray process."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymysql
import pytest

pytestmark = pytest.mark.timeout(120)


def read_until(proc: subprocess.Popen[str], pattern: str, timeout: float) -> str:
    assert proc.stdout is not None
    seen, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
            if re.search(pattern, seen):
                return seen
    raise AssertionError(f"no {pattern!r} within {timeout} s; output so far:\n{seen}")


def live_processes() -> dict[int, str]:
    """pid → command line of every process on the machine that is not a zombie."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found[int(entry.name)] = cmdline
    return found


def processes_mentioning(text: str) -> list[str]:
    return [cmd for cmd in live_processes().values() if text in cmd]


def descendants(root: int) -> dict[int, str]:
    """Every live process below `root` (a daemon in its own session is still a child)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        children = [p for p, parent in parents.items() if parent == pid]
        found.update(children)
        todo += children
    live = live_processes()
    return {pid: live[pid] for pid in found if pid in live}


def test_demo_runs_headless_serves_a_query_and_leaves_nothing_behind(
        sandbox: object) -> None:  # the fixture proves the prerequisites (fails under CI=true)
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    proc = subprocess.Popen([sys.executable, "-m", "bastion_tray", "demo", "--headless",
                             "--boot-delay", "2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        guide = read_until(proc, r"Press Ctrl-C", 60)
        home = re.search(r"BASTION_TRAY_HOME=(\S+)", guide)
        mysql = re.search(r"-h 127\.0\.0\.1 -P (\d+) -u (\S+) -p(\S+) (\S+)", guide)
        assert home and mysql, guide
        assert "demo: stopped" in read_until(proc, r"demo: stopped", 20)
        port, user, password, database = mysql.groups()
        conn = pymysql.connect(host="127.0.0.1", port=int(port), user=user, password=password,
                               database=database, connect_timeout=30)
        with conn.cursor() as cur:
            cur.execute("SELECT message FROM greetings")
            assert "hello" in str(cur.fetchone())
        conn.close()
        # the tray's status line (core.status), logged on each change: starting, then running
        # with SSH connected (no "SSH connecting" / "not connected" after "running")
        seen = read_until(proc, r"demo: running · (\d+ connections?|stops in|idle,)", 20)
        assert re.search(r"demo: starting… \d+ s", seen), seen
        started = descendants(proc.pid)  # moto, sshd and its sessions, MariaDB, the daemon
        assert any("moto" in cmd for cmd in started.values()), started
        assert any("daemon" in cmd for cmd in started.values()), started
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "Everything is stopped." in out
    time.sleep(0.5)
    assert processes_mentioning(home.group(1)) == []
    # nothing the demo started may survive it (a pid reused since would have another cmdline)
    live = live_processes()
    assert {pid: cmd for pid, cmd in started.items() if live.get(pid) == cmd} == {}
    assert not Path(home.group(1)).exists()


def test_demo_with_stand_ins_says_so_and_relays_through_the_forward(sandbox: object) -> None:
    """Where sshd/MariaDB cannot be installed the demo uses built-in stand-ins (forced here)."""
    import socket

    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    proc = subprocess.Popen([sys.executable, "-m", "bastion_tray", "demo", "--headless",
                             "--standins", "--boot-delay", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        guide = read_until(proc, r"Press Ctrl-C", 60)
        assert "stands in" in guide and "not MySQL" in guide
        port = re.search(r"127\.0\.0\.1', (\d+)\)|nc 127\.0\.0\.1 (\d+)", guide)
        assert port, guide
        with socket.create_connection(("127.0.0.1", int(port.group(1) or port.group(2))),
                                      timeout=30) as conn:
            conn.settimeout(30)
            greeting = conn.recv(200)
            assert b"stand-in database" in greeting
            conn.sendall(b"ping\n")
            assert b"ping" in conn.recv(200)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Everything is stopped." in out, out


def test_a_tray_that_crashes_leaves_the_demo_running_on_the_status_line(
        sandbox: object) -> None:
    """Only a tray that exits 0 (its Quit) ends the demo; one that cannot even start (here: a
    display that does not exist) is reported, and the live status line takes its place."""
    env = {**os.environ, "DISPLAY": ":65001"}  # no such X server: the tray fails at once
    env.pop("WAYLAND_DISPLAY", None)
    proc = subprocess.Popen([sys.executable, "-m", "bastion_tray", "demo", "--boot-delay", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        seen = read_until(proc, r"The tray exited with code [1-9]\d* \(see \S+tray\.log\)", 60)
        assert "Quit in the tray" in seen  # the guide was for a tray
        assert "demo: stopped" in read_until(proc, r"demo: stopped", 20)
        assert proc.poll() is None  # still running: Ctrl-C ends it
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Everything is stopped." in out, out
