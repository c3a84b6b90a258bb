"""CLI conventions: shutdown without a daemon, -v after the subcommand, logs, completion,
clipped echoes of user input, the first-run hint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = """\
[profiles.foo]
region = "us-east-1"

[profiles.foo.bastion]
instance_id = "i-0123456789abcdef0"
user = "u"
"""


@pytest.fixture
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # short: the control socket would live below it, and AF_UNIX paths are limited
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="bt-", dir="/tmp"))
    (path / "config.toml").write_text(CONFIG)
    return path


def child_env(home: Path, config: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASTION_TRAY_", "AWS_"))}
    env.update(BASTION_TRAY_HOME=str(home),
               BASTION_TRAY_CONFIG=str(config or home / "config.toml"),
               BASTION_TRAY_LOOPBACK_ONLY="1", PYTHONUNBUFFERED="1")
    return env


def cli(home: Path, *args: str, config: Path | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bastion_tray", *args],
                          env=child_env(home, config), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def in_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(os.environ):
        if key.startswith("BASTION_TRAY_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("BASTION_TRAY_HOME", str(home))
    monkeypatch.setenv("BASTION_TRAY_CONFIG", str(home / "config.toml"))
    return home


# --- 1. shutdown with no daemon ------------------------------------------------------------


def test_shutdown_without_daemon_starts_none(home: Path) -> None:
    proc = cli(home, "shutdown")
    assert proc.returncode == 0, proc.stderr
    assert "no daemon" in proc.stdout + proc.stderr
    run = home / "run"
    assert not (run / "daemon.pid").exists()
    assert not (run / "daemon.sock").exists()
