"""CLI conventions: shutdown without a daemon, -v after the subcommand, logs, completion,
clipped echoes of user input, the first-run hint."""

from __future__ import annotations

import argparse
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
def home() -> Path:
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


# --- 2. -v after the subcommand ------------------------------------------------------------


def test_verbose_after_the_subcommand() -> None:
    from bastion_tray.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["status", "-v"])
    assert args.verbose == 0 and args.verbose_sub == 1
    args = parser.parse_args(["-v", "status", "-vv"])
    assert args.verbose + args.verbose_sub == 3
    args = parser.parse_args(["status"])
    assert args.verbose + args.verbose_sub == 0


def test_main_sums_both_verbose_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion_tray.cli import logs, main

    seen: list[int] = []
    monkeypatch.setattr(logs, "configure_logging", lambda level, **_: seen.append(level))
    parser = main.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices["status"].set_defaults(run=lambda args: 0)
    monkeypatch.setattr(main, "build_parser", lambda: parser)
    assert main.main(["-v", "status", "-vv"]) == 0
    assert seen == [3]


def test_help_lists_every_subcommand_with_a_help_line() -> None:
    from bastion_tray.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name in sub.choices:
        assert helps.get(name), f"{name} has no help line"
    text = parser.format_help()
    for name in sub.choices:
        assert name in text
