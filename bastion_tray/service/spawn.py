"""One daemon per user: becoming it (lock, pidfile, listening endpoint) and starting it.

The lock decides. A daemon takes an exclusive `flock` on `daemon.lock` in the runtime dir for
its whole life; the kernel drops it when the process dies, even by SIGKILL, so a lock can never
be stale. Whoever holds it may treat a leftover socket or pidfile as stale. The lock file
itself is never removed: unlinking it would let two daemons lock two different files.

The server half of each transport lives here too, since listening is part of the claim.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hmac
import json
import logging
import os
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bastion_tray.core.errors import DaemonError
from bastion_tray.core.paths import AppPaths, ensure_private_dir
from bastion_tray.service.control_client import (
    ControlClient,
    LineReader,
    TcpTokenTransport,
    UnixSocketTransport,
    decode_line,
    transport_name,
)

if sys.platform == "win32":
    import msvcrt
else:
    import fcntl

log = logging.getLogger("bastion_tray.control")

POLL_INTERVAL = 0.05  # how often ensure_daemon asks a starting daemon for a ping
LOG_TAIL_LINES = 20  # how much of a failed daemon's log a spawn error shows


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists (sshuttle's `kill(pid, 0)`); True where we cannot tell."""
    if sys.platform == "win32":  # os.kill(pid, 0) would send CTRL_C_EVENT there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def write_pidfile(pidfile: Path, pid: int) -> None:
    """Atomically: a reader sees the old file or the whole new one, never half a number."""
    tmp = pidfile.with_name(f".{pidfile.name}.{pid}")
    tmp.write_text(f"{pid}\n")
    os.replace(tmp, pidfile)


def _try_lock(fd: int) -> bool:
    try:
        if sys.platform == "win32":
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError, or PermissionError from msvcrt
        return False
    return True


# --- the server half of each transport ---------------------------------------------------


def peer_uid(conn: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket; None where we cannot tell."""
    if hasattr(socket, "SO_PEERCRED"):  # Linux
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[1])
    if sys.platform == "darwin" or "bsd" in sys.platform:  # best effort: getpeereid(3)
        with contextlib.suppress(OSError, AttributeError, TypeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            uid, gid = ctypes.c_uint32(), ctypes.c_uint32()
            if libc.getpeereid(conn.fileno(), ctypes.byref(uid), ctypes.byref(gid)) == 0:
                return int(uid.value)
    return None


def refusal_for_peer(peer: int | None, own: int) -> str | None:
    """Why a peer is refused, or None. An unknown uid passes: the 0600 socket is the first door."""
    if peer is None or peer == own:
        return None
    return f"refused: peer uid {peer} is not the daemon's uid {own}"


class UnixSocketListener(UnixSocketTransport):
    def listen(self, paths: AppPaths) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # born 0600: no window between bind and chmod
        try:
            sock.bind(str(paths.socket))
        except OSError as exc:
            sock.close()
            raise DaemonError(f"cannot create the control socket {paths.socket}: {exc}",
                              hint="if the path is too long, use a shorter $BASTION_TRAY_HOME"
                              ) from exc
        finally:
            os.umask(old_umask)
        os.chmod(paths.socket, 0o600)
        sock.listen(64)
        return sock

    def authenticate(self, conn: socket.socket, reader: LineReader) -> str | None:
        return refusal_for_peer(peer_uid(conn), os.getuid())


class TcpTokenListener(TcpTokenTransport):
    HELLO_TIMEOUT = 5.0  # a peer that says nothing is dropped after this

    def __init__(self) -> None:
        self._token = ""

    def listen(self, paths: AppPaths) -> socket.socket:
        sock = socket.create_server(("127.0.0.1", 0))
        self._token = secrets.token_hex(32)
        target = self.endpoint(paths)
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        # 0600 in the 0700 runtime dir; on Windows the per-user profile's ACL does that job
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            json.dump({"port": sock.getsockname()[1], "token": self._token}, out)
        os.replace(tmp, target)
        return sock

    def authenticate(self, conn: socket.socket, reader: LineReader) -> str | None:
        conn.settimeout(self.HELLO_TIMEOUT)
        try:
            hello = decode_line(reader.read_line() or b"null")
        except (OSError, ValueError):
            hello = {}
        finally:
            conn.settimeout(None)
        token = hello.get("token")
        if hello.get("op") == "hello" and isinstance(token, str) \
                and hmac.compare_digest(token.encode(), self._token.encode()):
            return None
        return "refused: the first line must be a hello with the daemon's token"


Listener = UnixSocketListener | TcpTokenListener
LISTENERS: dict[str, type[Listener]] = {"unix": UnixSocketListener, "tcp": TcpTokenListener}


# --- the claim -----------------------------------------------------------------------------


class DaemonInstance:
    """This process's claim to be the user's one daemon: the lock, the pidfile, the listening
    socket. `release()` gives them up, the endpoint before the lock (else a successor could
    bind its socket and see us unlink it)."""

    def __init__(self, paths: AppPaths, lock_fd: int, listener: Listener,
                 sock: socket.socket) -> None:
        self.paths, self.listener, self.sock = paths, listener, sock
        self._lock_fd = lock_fd

    @classmethod
    def claim(cls, paths: AppPaths, transport: str | None = None) -> DaemonInstance:
        """Take the lock, clean what a dead daemon left, write our pidfile, listen.

        Raises DaemonError("a daemon is already running (pid N)") when another one lives.
        """
        listener = LISTENERS[transport_name(transport)]()
        ensure_private_dir(paths.runtime_dir)
        fd = os.open(paths.runtime_dir / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
        if not _try_lock(fd):
            os.close(fd)
            pid = read_pid(paths.pidfile)
            raise DaemonError(f"a daemon is already running (pid {pid or 'not yet written'})",
                              hint="stop it first, or use the running one")
        # The pidfile first: a racing loser's ensure_daemon reads it to learn that we won.
        stale = read_pid(paths.pidfile)
        write_pidfile(paths.pidfile, os.getpid())
        try:
            _clean_stale_endpoint(paths, listener)
            sock = listener.listen(paths)
        except BaseException:
            _restore_pidfile(paths.pidfile, stale)
            os.close(fd)
            raise
        if stale is not None and stale != os.getpid() and not pid_alive(stale):
            log.info("replaced stale pidfile %s of dead pid %d", paths.pidfile, stale)
        return cls(paths, fd, listener, sock)

    def release(self) -> None:
        if self._lock_fd < 0:
            return
        self.sock.close()
        self.listener.remove_endpoint(self.paths)
        if read_pid(self.paths.pidfile) == os.getpid():
            self.paths.pidfile.unlink(missing_ok=True)
        os.close(self._lock_fd)  # closing the only descriptor drops the flock
        self._lock_fd = -1


def _clean_stale_endpoint(paths: AppPaths, listener: Listener) -> None:
    endpoint = listener.endpoint(paths)
    if not os.path.lexists(endpoint):
        return
    try:  # with the lock ours nobody should answer, unless a daemon runs without the lock
        other = ControlClient.connect(paths, timeout=1.0, transport=listener.name)
    except DaemonError:
        log.info("removing stale control endpoint %s: no daemon answers there", endpoint)
        listener.remove_endpoint(paths)
        return
    raise DaemonError(f"a daemon is already running (pid {other.pid})",
                      hint="stop it first, or use the running one")


def _restore_pidfile(pidfile: Path, pid: int | None) -> None:
    if pid is None:
        pidfile.unlink(missing_ok=True)
    else:
        write_pidfile(pidfile, pid)


def ensure_daemon(paths: AppPaths, *, argv: list[str], env: Mapping[str, str] | None = None,
                  timeout: float = 15.0, log_path: Path,
                  transport: str | None = None) -> ControlClient:
    """A client for the user's daemon, starting `argv` detached when none answers.

    The started process's stdout and stderr go to the end of `log_path`; its stdin is
    /dev/null. When callers race, each may start a daemon; the instance lock lets one win, the
    others exit, and every caller gets a client for the winner.
    """
    try:
        return ControlClient.connect(paths, timeout=2.0, transport=transport)
    except DaemonError:
        pass
    ensure_private_dir(log_path.parent)
    log_offset = log_path.stat().st_size if log_path.exists() else 0
    pid_before = read_pid(paths.pidfile)  # a stale pidfile must not pass for a racing winner
    proc = _spawn_detached(argv, env, log_path)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ControlClient.connect(paths, timeout=1.0, transport=transport)
        except DaemonError:
            pass
        exited = proc.poll() is not None
        if exited and not _another_daemon_is_starting(paths, (proc.pid, pid_before)):
            raise DaemonError(
                f"the daemon exited with status {proc.returncode} before answering; "
                f"the end of {log_path}:\n{_log_tail(log_path, log_offset)}",
                hint=f"command: {' '.join(argv)}")
        if time.monotonic() > deadline:
            if not exited:  # a daemon nobody can reach would hold the lock forever
                _stop(proc)
            raise DaemonError(
                f"the daemon did not answer within {timeout:g} s; "
                f"the end of {log_path}:\n{_log_tail(log_path, log_offset)}",
                hint=f"command: {' '.join(argv)}")
        time.sleep(POLL_INTERVAL)


def _spawn_detached(argv: list[str], env: Mapping[str, str] | None,
                    log_path: Path) -> subprocess.Popen[bytes]:
    detach: dict[str, Any] = {"start_new_session": True}  # no terminal's SIGHUP reaches it
    if sys.platform == "win32":
        detach = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP
                  | subprocess.DETACHED_PROCESS}
    with open(log_path, "ab") as out, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(argv, stdin=devnull, stdout=out, stderr=subprocess.STDOUT,
                                env=None if env is None else dict(env), close_fds=True,
                                **detach)
    # Reap it whenever it exits, so it never lingers as a zombie of a long-lived tray.
    threading.Thread(target=proc.wait, name=f"reap-daemon-{proc.pid}", daemon=True).start()
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()


def _another_daemon_is_starting(paths: AppPaths, not_winners: tuple[int | None, ...]) -> bool:
    """Our process exited, but a racing winner took the lock and wrote its pidfile since."""
    pid = read_pid(paths.pidfile)
    return pid is not None and pid not in not_winners and pid_alive(pid)


def _log_tail(log_path: Path, offset: int) -> str:
    try:
        with open(log_path, "rb") as log_file:
            if log_file.seek(0, os.SEEK_END) >= offset:  # not rotated since: only this run
                log_file.seek(offset)
            else:
                log_file.seek(0)
            text = log_file.read().decode(errors="replace")
    except OSError as exc:
        return f"  (cannot read it: {exc})"
    lines = text.splitlines()[-LOG_TAIL_LINES:]
    return "\n".join(f"  {line}" for line in lines) if lines else "  (nothing written)"
