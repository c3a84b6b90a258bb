"""`bastion-tray autostart`: each platform's login entry, written into a directory we pass."""

from __future__ import annotations

import configparser
import os
import plistlib
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bastion_tray.ui import autostart

ARGV = ["/opt/py thon/bin/python3", "-m", "bastion_tray", "--config", "/home/me/100%/c.toml",
        "tray"]


def test_each_platform_gets_its_strategy() -> None:
    assert isinstance(autostart.strategy_for("linux"), autostart.XdgAutostart)
    assert isinstance(autostart.strategy_for("darwin"), autostart.LaunchAgent)
    assert isinstance(autostart.strategy_for("win32"), autostart.StartupFolder)
    assert isinstance(autostart.strategy_for("linux", "startup"), autostart.StartupFolder)
    with pytest.raises(autostart.UsageError, match="not supported on plan9"):
        autostart.strategy_for("plan9")


def test_default_folders() -> None:
    env = {"HOME": "/home/me", "APPDATA": "C:/Users/me/AppData/Roaming"}
    assert autostart.XdgAutostart().default_dir(env) == Path("/home/me/.config/autostart")
    assert autostart.XdgAutostart().default_dir({**env, "XDG_CONFIG_HOME": "/x"}) == \
        Path("/x/autostart")
    assert autostart.LaunchAgent().default_dir(env) == Path("/home/me/Library/LaunchAgents")
    assert autostart.StartupFolder().default_dir(env).parts[-4:] == \
        ("Windows", "Start Menu", "Programs", "Startup")


def test_xdg_entry_is_a_valid_desktop_file_whose_exec_round_trips(tmp_path: Path) -> None:
    s = autostart.XdgAutostart()
    path = s.enable(tmp_path, ARGV, {"BASTION_TRAY_HOME": "/tmp/bt home"})
    assert path == tmp_path / "bastion-tray.desktop"
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str  # type: ignore[assignment,method-assign]
    entry.read(path)
    desktop = entry["Desktop Entry"]
    assert desktop["Type"] == "Application" and desktop["Terminal"] == "false"
    assert Path(desktop["Icon"]).is_file()
    # the spec: unescape the string value, then split like a shell, then %% → %
    words = shlex.split(desktop["Exec"].replace("\\\\", "\\"))
    assert [w.replace("%%", "%") for w in words] == \
        ["env", "BASTION_TRAY_HOME=/tmp/bt home", *ARGV]
    if os.path.exists("/usr/bin/desktop-file-validate"):
        subprocess.run(["desktop-file-validate", str(path)], check=True)
    assert s.disable(tmp_path) == path and not path.exists()
    assert s.disable(tmp_path) is None


def test_launch_agent_is_a_plist_that_runs_at_login(tmp_path: Path) -> None:
    path = autostart.LaunchAgent().enable(tmp_path, ARGV, {"BASTION_TRAY_HOME": "/tmp/h"})
    assert path.name == f"{autostart.LAUNCHD_LABEL}.plist"
    plist = plistlib.loads(path.read_bytes())
    assert plist["Label"] == autostart.LAUNCHD_LABEL
    assert plist["ProgramArguments"] == ARGV
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] is False
    assert plist["EnvironmentVariables"] == {"BASTION_TRAY_HOME": "/tmp/h"}


def test_startup_script_quotes_for_cmd(tmp_path: Path) -> None:
    argv = [r"C:\Program Files\Python\pythonw.exe", "-m", "bastion_tray", "--config",
            r"C:\Users\me\100%\c.toml", "tray"]
    path = autostart.StartupFolder().enable(tmp_path, argv, {})
    assert path.name == "bastion-tray.cmd"
    text = path.read_bytes().decode()
    assert text.startswith("@echo off\r\n") and text.endswith("\r\n")
    assert ('start "" "C:\\Program Files\\Python\\pythonw.exe" -m bastion_tray --config '
            '"C:\\Users\\me\\100%%\\c.toml" tray\r\n') in text


def test_the_cli_enables_and_disables_in_a_given_dir(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[profiles.foo]\nregion = "eu-west-1"\n[profiles.foo.bastion]\n'
                      'instance_id = "i-0123456789abcdef0"\nuser = "ec2-user"\n')
    env = {**os.environ, "BASTION_TRAY_HOME": str(tmp_path / "home")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bastion_tray", "--config", str(config),
                               "autostart", "--dir", str(tmp_path / "auto"), *args],
                              env=env, capture_output=True, text=True, timeout=30)

    assert "autostart is disabled" in cli().stdout
    enabled = cli("--enable")
    assert enabled.returncode == 0, enabled.stderr
    entry = tmp_path / "auto" / "bastion-tray.desktop"
    assert f"wrote {entry}" in enabled.stdout
    text = entry.read_text()
    assert f"BASTION_TRAY_HOME={tmp_path / 'home'}" in text and str(config) in text
    assert "autostart is enabled" in cli().stdout
    assert f"removed {entry}" in cli("--disable").stdout and not entry.exists()
    assert "was not enabled" in cli("--disable").stdout
    config.write_text("not toml [")
    broken = cli("--enable")
    assert broken.returncode == 2 and "TOML" in broken.stderr and not entry.exists()
