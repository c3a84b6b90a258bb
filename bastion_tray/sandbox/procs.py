"""Child processes the sandbox owns, and how to make sure every one of them is gone.

Each child starts in its own session (its own process group), so a group kill reaches what it
forks. sshd is special: every connection's sshd calls setsid() and leaves that group, so an sshd
is stopped by freezing and killing its whole process tree, found through /proc.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bastion_tray.sandbox.errors import SandboxError

log = logging.getLogger(__name__)


def is_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (PID 1 here may never reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """Every process below `pid` right now (children, their children, …)."""
    tree = _children_by_parent()
    found: list[int] = []
    todo = list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(tree.get(child, []))
    return found


def _signal(pid: int, sig: signal.Signals, *, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and everything below it, freezing first so nothing forks away meanwhile."""
    if not os.path.isdir("/proc"):
        _signal(pid, signal.SIGKILL, group=True)
        return
    _signal(pid, signal.SIGSTOP)
    frozen: set[int] = {pid}
    while True:
        fresh = [p for p in descendants(pid) if p not in frozen]
        if not fresh:
            break
        for child in fresh:
            _signal(child, signal.SIGSTOP)
        frozen.update(fresh)
    for member in frozen:
        _signal(member, signal.SIGKILL)
    _signal(pid, signal.SIGKILL, group=True)


class ProcessSet:
    """Every process the sandbox started; `close()` leaves none of them running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: list[tuple[str, subprocess.Popen[bytes], bool]] = []
        self._closed = False

    def spawn(self, name: str, argv: Sequence[str], *, log_file: Path,
              env: dict[str, str] | None = None,
              tree_kill: bool = False) -> subprocess.Popen[bytes]:
        """Start `argv`, output appended to `log_file`; `tree_kill` for sshd-like forkers."""
        with self._lock:
            # under the lock, so a watcher thread cannot start anything once close() began
            if self._closed:
                raise SandboxError(f"not starting {name}: the sandbox is closing")
            with open(log_file, "ab") as out:
                proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self._procs.append((name, proc, tree_kill))
        log.debug("[sandbox] started %s pid=%d", name, proc.pid)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], *, grace: float = 5.0) -> None:
        """Stop one process: its tree at once if tree_kill, else SIGTERM, `grace` s, SIGKILL."""
        with self._lock:
            entry = next((e for e in self._procs if e[1] is proc), None)
            if entry is not None:
                self._procs.remove(entry)
        tree = entry[2] if entry else False
        if tree:
            kill_tree(proc.pid)
        elif proc.poll() is None:
            _signal(proc.pid, signal.SIGTERM, group=True)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("[sandbox] pid=%d ignored SIGTERM for %.0fs; killing", proc.pid, grace)
        _signal(proc.pid, signal.SIGKILL, group=True)
        proc.wait()

    def pids(self) -> dict[str, int]:
        with self._lock:
            return {f"{name}:{p.pid}": p.pid for name, p, _ in self._procs if p.poll() is None}

    def close(self) -> None:
        """Stop everything, newest first (the database before the endpoint that outlives it)."""
        with self._lock:
            self._closed = True
        while True:
            with self._lock:
                if not self._procs:
                    return
                proc = self._procs[-1][1]
            self.stop(proc)


def wait_for(predicate: Callable[[], object], *, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it returns truthy (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
