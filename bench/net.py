"""Loopback-only guard and child-process helpers shared by the bench modules."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def require_loopback(host: str) -> str:
    """Every address the bench touches is in 127.0.0.0/8; anything else is a bug: stop."""
    if ipaddress.ip_address(host) not in LOOPBACK:
        raise SystemExit(f"bench: refusing non-loopback address {host!r}")
    return host


@contextlib.contextmanager
def child(args: Sequence[str], *, ready: str = "READY", timeout: float = 30.0,
          env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run a child in its own process group until it prints a line starting with `ready`;
    yield (process, that line); kill the whole group on the way out, whatever happened."""
    proc = subprocess.Popen(list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, start_new_session=True, env=env)
    try:
        line = _wait_line(proc, ready, timeout)
        yield proc, line
    finally:
        stop(proc)


def _wait_line(proc: subprocess.Popen[str], ready: str, timeout: float) -> str:
    import selectors

    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(deadline - time.monotonic()):
                break
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith(ready):
                return line.strip()
    raise RuntimeError(f"{proc.args!s} did not print {ready!r} within {timeout:.0f}s "
                       f"(exit code {proc.poll()})")


def stop(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(Exception):
        if proc.stdin:
            proc.stdin.close()
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, if any


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def raise_fd_limit() -> None:
    """500 concurrent connections need ~1,500 descriptors in the forwarder: lift the soft cap."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
