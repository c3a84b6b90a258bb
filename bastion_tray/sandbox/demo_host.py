"""What the demo asks of this machine: is there a display, is a port free, and shutting down
the daemon it started (by request, then by SIGKILL if it lingers)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time


def has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def shutdown_daemon(env: dict[str, str]) -> None:
    from bastion_tray.core.paths import app_paths
    from bastion_tray.service.control_client import ControlClient
    from bastion_tray.service.spawn import pid_alive, read_pid

    paths = app_paths(env)
    pid = read_pid(paths.pidfile)
    with contextlib.suppress(Exception), ControlClient.connect(paths) as client:
        client.request("shutdown")
    deadline = time.monotonic() + 15
    while pid and pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid and pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
