"""The TCP edge towards the bastion: dial it, and wait until its port answers SSH.

A started EC2 instance accepts TCP on port 22 a little before sshd is ready, and a port that
accepts but never speaks (a half-booted instance, a proxy in the way) is no answer either: the
peer counts as answering only once it sends an identification line starting with ``SSH-``.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable

from bastion_tray.core import netguard
from bastion_tray.core.errors import SSHError, WaitTimeout

#: how long one probe waits for the TCP connect, and then for the banner
CONNECT_TIMEOUT = 2.0
BANNER_TIMEOUT = 1.0
#: the RFC lets a server send other lines before its banner; we read at most this much
MAX_PREBANNER = 8192
#: progress is reported at most this often
PROGRESS_EVERY = 1.0


def hostport(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe_socket_error(exc: OSError) -> str:
    """A few words for the log and for error messages: "connection refused", "timed out"…"""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the address ({exc.strerror})"
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "no route to host"
    return exc.strerror or str(exc) or type(exc).__name__


def open_tcp(host: str, port: int, *, timeout: float, what: str = "the bastion") -> socket.socket:
    """A connected TCP socket with TCP_NODELAY, or SSHError saying what to check.

    Calls `netguard.check_address` first, so loopback-only mode refuses before any packet.
    """
    netguard.check_address(host, "SSH connection")
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        reason = describe_socket_error(exc)
        raise SSHError(
            f"cannot connect to {what} at {hostport(host, port)}: {reason}",
            hint=f"check that the instance is running and that its security group allows "
                 f"SSH (TCP {port}) from your IP address",
        ) from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        pass  # an exotic socket without these options still works, only slower to notice loss
    return sock


def probe_ssh_banner(host: str, port: int, *, connect_timeout: float = CONNECT_TIMEOUT,
                     banner_timeout: float = BANNER_TIMEOUT) -> tuple[str | None, str]:
    """One probe: (the ``SSH-…`` line, "") when SSH answers, else (None, why not)."""
    try:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
    except OSError as exc:
        return None, describe_socket_error(exc)
    with sock:
        sock.settimeout(banner_timeout)
        deadline = time.monotonic() + banner_timeout
        data = b""
        try:
            while len(data) < MAX_PREBANNER:
                for line in data.split(b"\n")[:-1]:
                    if line.startswith(b"SSH-"):
                        return line.strip().decode("ascii", "replace"), ""
                sock.settimeout(max(deadline - time.monotonic(), 0.01))
                chunk = sock.recv(1024)
                if not chunk:
                    return None, _no_banner("the port closed the connection", data)
                data += chunk
        except TimeoutError:
            return None, _no_banner(f"no SSH banner within {banner_timeout:g} s", data)
        except OSError as exc:
            return None, describe_socket_error(exc)
    return None, _no_banner("no SSH banner", data)


def _no_banner(reason: str, data: bytes) -> str:
    if not data:
        return f"{reason} (the port accepts connections but sent nothing)"
    first = data.split(b"\n", 1)[0][:40].decode("ascii", "replace").strip()
    return f"{reason}; it sent {first!r}, which is not SSH"


def wait_until_ssh_answers(
    host: str,
    port: int,
    *,
    timeout: float,
    interval: float = 0.25,
    progress: Callable[[str, str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    what: str = "the bastion",
) -> float:
    """Probe `host:port` until it sends an SSH banner; return the seconds waited.

    Probes at most every `interval` (capped at 0.25 s) with short TCP connects. `progress` gets
    ("waiting for SSH", "12 s, connection refused") at most about once a second. Raises
    WaitTimeout naming what was waited for and the last error seen, or LoopbackViolation before
    any probe when loopback-only mode forbids `host`.
    """
    netguard.check_address(host, "SSH readiness probe")
    interval = min(max(interval, 0.01), 0.25)
    start = clock()
    last_report: float | None = None
    while True:
        remaining = timeout - (clock() - start)
        banner, error = probe_ssh_banner(
            host, port, connect_timeout=max(min(CONNECT_TIMEOUT, remaining), 0.05),
            banner_timeout=max(min(BANNER_TIMEOUT, remaining), 0.05))
        elapsed = clock() - start
        if banner is not None:
            return elapsed
        if elapsed >= timeout:
            raise WaitTimeout(
                f"{what} {hostport(host, port)} did not answer SSH within {timeout:g} s "
                f"(last error: {error})",
                hint="check that the instance is running, that sshd started (the instance's "
                     f"console output shows its boot), and that its security group allows "
                     f"SSH (TCP {port}) from your IP address",
            )
        if progress is not None and (last_report is None
                                     or elapsed - last_report >= PROGRESS_EVERY):
            progress("waiting for SSH", f"{elapsed:.0f} s, {error}")
            last_report = elapsed
        sleep(min(interval, max(timeout - elapsed, 0.0)))
