"""Drive the real CLI and daemon against the sandbox, isolated by BASTION_TRAY_HOME."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion_tray.core.netguard import is_loopback
from bastion_tray.sandbox import Sandbox


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (no reaper in a container) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


class App:
    """One isolated bastion-tray installation: its home, config, env, daemon."""

    def __init__(self, sandbox: Sandbox, *, trusted: bool = True, **config: Any) -> None:
        self.sandbox = sandbox
        # short: the control socket lives below it and AF_UNIX paths are limited to ~107 bytes
        self.home = Path(tempfile.mkdtemp(prefix="bt-", dir="/tmp"))
        self.config = sandbox.write_config(self.home / "config.toml", **config)
        self.env = sandbox.child_env()
        self.env.update(BASTION_TRAY_HOME=str(self.home), BASTION_TRAY_CONFIG=str(self.config),
                        BASTION_TRAY_LOOPBACK_ONLY="1", PYTHONUNBUFFERED="1")
        assert is_loopback(sandbox.bastion_host), sandbox.bastion_host
        if trusted:
            self.trust_bastion()

    @property
    def known_hosts(self) -> Path:
        return self.home / "state" / "known_hosts"

    def trust_bastion(self) -> None:
        """What `bastion-tray trust foo` records: the bastion's key under foo-bastion."""
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        self.known_hosts.write_text(f"foo-bastion {self.sandbox.bastion_host_key_line}\n")

    def cli(self, *args: str, timeout: float = 60, input: str | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "bastion_tray", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"bastion-tray {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}\n--- daemon log:\n{self.log()}")
        return proc

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "bastion_tray", *args], env=self.env,
                                **kwargs)

    def status(self) -> dict[str, Any]:
        proc = self.cli("status", "--json", check=True)
        return json.loads(proc.stdout)["profiles"]["foo"]  # type: ignore[no-any-return]

    def log(self) -> str:
        path = self.home / "log" / "daemon.log"
        return path.read_text() if path.exists() else "(no daemon log)"

    def daemon_pid(self) -> int | None:
        pidfile = self.home / "run" / "daemon.pid"
        with contextlib.suppress(OSError, ValueError):
            return int(pidfile.read_text().split()[0])
        return None

    def instance_state(self) -> str:
        import boto3

        ec2 = boto3.client("ec2", region_name=self.sandbox.region,
                           endpoint_url=self.sandbox.endpoint_url,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        found = ec2.describe_instances(InstanceIds=[self.sandbox.bastion_instance_id])
        return str(found["Reservations"][0]["Instances"][0]["State"]["Name"])

    def close(self) -> None:
        pid = self.daemon_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and alive(pid):
                time.sleep(0.05)
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.home, ignore_errors=True)
