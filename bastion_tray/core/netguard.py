"""BASTION_TRAY_LOOPBACK_ONLY: refuse every outgoing connection to a non-loopback address.

Two layers. `check_address()` is called by the app before it dials the bastion or probes a port,
so the refusal names the address in a normal error. `install_audit_guard()` adds a `sys.audit`
hook on `socket.connect` as a backstop for everything else in the process (botocore, paramiko,
a bug of ours): the sandbox, the demo and every test run with it, so even a daemon subprocess
cannot reach out.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from typing import Any

from bastion_tray.core.errors import LoopbackViolation

ENV = "BASTION_TRAY_LOOPBACK_ONLY"
_installed = False


def loopback_only(env: dict[str, str] | None = None) -> bool:
    value = (os.environ if env is None else env).get(ENV, "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1, ::ffff:127.x and 'localhost'; False for names and the rest."""
    if host.lower() in {"localhost", "localhost.localdomain"}:
        return True
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def check_address(host: str, what: str = "connection") -> None:
    """Raise LoopbackViolation when loopback-only mode is on and `host` is not loopback."""
    if loopback_only() and not is_loopback(host):
        raise LoopbackViolation(
            f"refusing {what} to {host}: {ENV}=1 allows loopback addresses only "
            "(127.0.0.0/8, ::1)",
            hint=f"unset {ENV} to reach real hosts",
        )


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "socket.connect" or not loopback_only():
        return
    sock, address = args
    if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return
    host = address[0] if isinstance(address, tuple) else str(address)
    if not is_loopback(host):
        raise LoopbackViolation(
            f"refusing connection to {host}: {ENV}=1 allows loopback addresses only"
        )


def install_audit_guard() -> None:
    """Install the process-wide backstop once (audit hooks cannot be removed)."""
    global _installed
    if not _installed:
        sys.addaudithook(_audit)
        _installed = True
