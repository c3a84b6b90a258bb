"""What every client of the daemon shares — the CLI, the tray and the demo: how to start the
daemon (and the tray), how to reach the daemon (starting one when none answers), and the
ProxyCommand that sends ssh through it. Below both the CLI and the UI, so neither reaches into
the other."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bastion_tray.core.paths import AppPaths, app_paths, ensure_private_dir

if TYPE_CHECKING:
    from bastion_tray.core.config import Config
    from bastion_tray.service.control_client import ControlClient

CARRIED_ENV = ("BASTION_TRAY_HOME", "BASTION_TRAY_LOOPBACK_ONLY")  # what a ProxyCommand keeps


def daemon_argv(config: Config) -> list[str]:
    """How to start the daemon: this interpreter, this package, this config file."""
    return [sys.executable, "-m", "bastion_tray", "--config", str(config.path.resolve()),
            "daemon"]


def tray_argv(config_path: Path, platform: str = sys.platform) -> list[str]:
    """How to start the tray: this interpreter (its windowless twin on Windows), this package,
    this config file. A process of its own, so nothing below the UI has to import it."""
    python = Path(sys.executable)
    if platform == "win32" and (python.parent / "pythonw.exe").exists():
        python = python.parent / "pythonw.exe"
    return [str(python), "-m", "bastion_tray", "--config", str(config_path.resolve()), "tray"]


def connect(config: Config, paths: AppPaths | None = None) -> ControlClient:
    """A client of the running daemon, starting one in the background when none answers."""
    from bastion_tray.core.errors import DaemonError
    from bastion_tray.service.control_client import ControlClient

    paths = paths or app_paths()
    ensure_private_dir(paths.log_dir)
    try:  # the usual case, a daemon that answers, without importing how to start one
        return ControlClient.connect(paths, timeout=2.0)  # as ensure_daemon's first try
    except DaemonError:  # none, or one that answers nonsense: ensure_daemon decides, as before
        pass
    from bastion_tray.service.spawn import ensure_daemon  # subprocess, ctypes, hmac: ~6 ms

    return ensure_daemon(paths, argv=daemon_argv(config), log_path=paths.daemon_log)


def connect_running(paths: AppPaths | None = None) -> ControlClient | None:
    """A client of the daemon already running, or None when none answers. Never starts one."""
    from bastion_tray.service.control_client import ControlClient, NoDaemon

    try:
        return ControlClient.connect(paths or app_paths())
    except NoDaemon:
        return None


def proxy_command(config: Config, profile: str, target: str = "%h %p") -> str:
    """The ProxyCommand line that sends ssh through the daemon (ssh-config, shell, the tray's
    "Open shell"). It carries the variables that say which daemon to use and what it may reach."""
    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k in CARRIED_ENV]
    prefix = ["env", *env] if env and os.name != "nt" else []
    argv = [*prefix, sys.executable, "-m", "bastion_tray", "--config",
            str(config.path.resolve()), "proxy", profile]
    return " ".join(a if a.startswith("BASTION_TRAY_") else shlex.quote(a)
                    for a in argv) + f" {target}"
