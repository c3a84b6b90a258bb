"""Loopback addresses and ports for the sandbox's peers, and the SSH banner probe."""

from __future__ import annotations

import ipaddress
import random
import socket

from bastion_tray.core.errors import LoopbackViolation
from bastion_tray.core.netguard import is_loopback

_LOOPBACK_NET = ipaddress.ip_network("127.0.0.0/8")


def require_loopback(address: str, what: str) -> str:
    """Raise unless `address` is an IPv4 address in 127.0.0.0/8: nothing here may leave the host."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        parsed = None
    if parsed is None or parsed not in _LOOPBACK_NET:
        raise LoopbackViolation(
            f"sandbox {what} {address!r} is not in 127.0.0.0/8; refusing to use it")
    return address


def usable_host_address(address: str) -> bool:
    """A 127.x.y.z that is not 127.0.0.1 (shared with everything) and not a .0/.255 edge."""
    if not is_loopback(address) or address == "127.0.0.1":
        return False
    last = address.rsplit(".", 1)[-1]
    return last not in {"0", "255"}


def can_bind(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on `host` a moment ago (the kernel's pick, so parallel runs differ)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pick_loopback_address(rng: random.Random, avoid: set[str], tries: int = 50) -> str:
    """A random bindable 127.a.b.c (c in 2..254) not in `avoid`; random so parallel runs differ."""
    for _ in range(tries):
        address = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}"
        if address not in avoid and usable_host_address(address) and can_bind(address, 0):
            return require_loopback(address, "host address")
    raise OSError(f"no bindable loopback address found in {tries} tries")


def ssh_banner(host: str, port: int, timeout: float = 1.0) -> str | None:
    """The server's identification line ("SSH-2.0-…") or None when nothing SSH answers."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 512:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    line = data.split(b"\n", 1)[0].strip().decode("ascii", "replace")
    return line if line.startswith("SSH-") else None
