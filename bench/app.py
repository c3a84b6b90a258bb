"""The product as users run it: one isolated bastion-tray install (home, config, daemon) aimed at
the sandbox, driven only through the real CLI. A handle: `close()` shuts its daemon down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bastion_tray.core.config import Settings
from bastion_tray.sandbox.configfile import PROFILE, Value, dump_tables
from bench.net import require_loopback
from bench.procstat import descendants, tree_cpu_seconds


def data_plane_supported() -> bool:
    """Whether this product version has the `[settings] data_plane` key."""
    return "data_plane" in {f.name for f in dataclasses.fields(Settings)}


class OurDaemon:
    """`forwards` are extra forwards (name → far host, port) next to the sandbox's `db`."""

    def __init__(self, sandbox: Any, *, data_plane: str | None = None,
                 forwards: Mapping[str, tuple[str, int]] | None = None) -> None:
        self.sandbox = sandbox
        # short: the control socket lives below it and AF_UNIX paths hold ~107 bytes
        self.home = Path(tempfile.mkdtemp(prefix="bt-bench-", dir="/tmp"))
        settings = {"data_plane": data_plane} if data_plane else None
        self.config = sandbox.write_config(self.home / "config.toml", idle_timeout="30m",
                                           extra_settings=settings, db_local_port=_free_port())
        extra: dict[tuple[str, ...], Mapping[str, Value | None]] = {
            ("profiles", PROFILE, "forwards", name): {
            "local_port": _free_port(), "remote_host": require_loopback(host),
            "remote_port": port} for name, (host, port) in (forwards or {}).items()}
        if extra:
            with self.config.open("a") as out:
                out.write("\n" + dump_tables(extra))
        self.env = sandbox.child_env()
        # HOME too: nothing the bench runs may touch the real ~/.ssh
        (self.home / "user").mkdir()
        self.env.update(BASTION_TRAY_HOME=str(self.home), BASTION_TRAY_CONFIG=str(self.config),
                        BASTION_TRAY_LOOPBACK_ONLY="1", HOME=str(self.home / "user"))
        known = self.home / "state" / "known_hosts"
        known.parent.mkdir(parents=True, exist_ok=True)
        known.write_text(sandbox.trusted_lines(PROFILE))  # what `bastion-tray trust` records

    def cli(self, *args: str, timeout: float = 120) -> str:
        proc = subprocess.run([sys.executable, "-m", "bastion_tray", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if proc.returncode:
            raise RuntimeError(f"bastion-tray {' '.join(args)} exited {proc.returncode}: "
                               f"{proc.stderr.strip()}\n--- daemon log:\n{self.log_tail()}")
        return proc.stdout

    def connect(self, forward: str) -> tuple[str, int]:
        host, _, port = self.cli("connect", PROFILE, forward).strip().rpartition(":")
        return require_loopback(host), int(port)

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("status", "--json"))["profiles"][PROFILE]  # type: ignore[no-any-return]

    def data_plane(self) -> str:
        """What the daemon reports it moves bytes with ("openssh", "paramiko"), or "?"."""
        with contextlib.suppress(Exception):
            return str(self.status()["bastion"].get("data_plane") or "?")
        return "?"

    def ssh_config(self) -> Path:
        """The blocks `bastion-tray ssh-config` prints, as a file for `ssh -F`."""
        path = self.home / "ssh_config"
        path.write_text(self.cli("ssh-config", PROFILE))
        return path

    @property
    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.home / "run" / "daemon.pid").read_text().split()[0])
        return None

    def cpu_seconds(self) -> float:
        """The daemon and everything below it (an ssh ControlMaster, if it runs one)."""
        pid = self.pid
        return tree_cpu_seconds([pid]) if pid else 0.0

    def describe(self) -> str:
        """The data plane it reports, its processes and any child ssh's cipher option."""
        pid = self.pid
        kids = descendants(pid) if pid else []
        argv = [_cmdline(kid) for kid in kids]
        ciphers = sorted({arg for args in argv for arg in args if "iphers" in arg})
        ssh = [args for args in argv if args and Path(args[0]).name == "ssh"]
        text = f"data plane {self.data_plane()}, {1 + len(kids) if pid else 0} process(es)"
        if ssh:
            text += ("; its ssh master passes " + ", ".join(ciphers) if ciphers else
                     "; its ssh master sets no Ciphers (OpenSSH's default order, "
                     "chacha20-poly1305 first)")
        return text

    def log_tail(self, lines: int = 30) -> str:
        path = self.home / "log" / "daemon.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""

    def close(self) -> None:
        pid = self.pid
        with contextlib.suppress(Exception):
            subprocess.run([sys.executable, "-m", "bastion_tray", "shutdown"], env=self.env,
                           capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        if pid is not None:
            kids = descendants(pid)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            for each in [pid, *kids]:
                if _alive(each):  # a stuck daemon, or an orphaned ssh master of ours
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(each, signal.SIGKILL)
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> OurDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cmdline(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
