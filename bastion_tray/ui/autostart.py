"""Start the tray at login: an XDG autostart entry, a LaunchAgent, or a Startup-folder script.

Platform variants are strategies chosen by name with `is_supported()`. Each writes into a
directory that defaults to the platform's place but can be passed in, so all three are
tested on Linux.
"""

from __future__ import annotations

import os
import plistlib
import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import ClassVar

from bastion_tray.core.errors import UsageError
from bastion_tray.service.clientside import tray_argv as tray_argv  # what the login item runs

APP_ID = "bastion-tray"
LAUNCHD_LABEL = "io.github.bastion-tray"
CARRIED_ENV = ("BASTION_TRAY_HOME",)  # what the login session must also know to find our files


def carried_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if env is None else env
    return {k: env[k] for k in CARRIED_ENV if env.get(k)}


class Strategy:
    name: ClassVar[str]
    platforms: ClassVar[tuple[str, ...]]
    file_name: ClassVar[str]

    @classmethod
    def is_supported(cls, platform: str = sys.platform) -> bool:
        return platform.startswith(cls.platforms)

    def default_dir(self, env: Mapping[str, str]) -> Path:
        raise NotImplementedError

    def render(self, argv: Sequence[str], env: Mapping[str, str]) -> bytes:
        raise NotImplementedError

    def path(self, directory: Path) -> Path:
        return directory / self.file_name

    def enable(self, directory: Path, argv: Sequence[str], env: Mapping[str, str]) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        target = self.path(directory)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(self.render(argv, env))
        os.replace(tmp, target)
        return target

    def disable(self, directory: Path) -> Path | None:
        """Remove the entry; returns the path removed, or None when there was none."""
        target = self.path(directory)
        if not target.exists():
            return None
        target.unlink()
        return target


# ---- Linux and the BSDs: XDG autostart -----------------------------------------------------


def desktop_exec(argv: Sequence[str]) -> str:
    """An Exec= value per the Desktop Entry spec: quote what needs it, escape inside quotes,
    double every %, then escape backslashes once more for the string value itself."""
    reserved = set(" \t\n\"'\\><~|&;$*?#()`")
    words = []
    for arg in argv:
        arg = arg.replace("%", "%%")
        if any(c in reserved for c in arg):
            arg = '"' + "".join("\\" + c if c in '"`$\\' else c for c in arg) + '"'
        words.append(arg)
    return " ".join(words).replace("\\", "\\\\")


class XdgAutostart(Strategy):
    name = "xdg"
    platforms = ("linux", "freebsd", "openbsd", "netbsd")
    file_name = f"{APP_ID}.desktop"

    def default_dir(self, env: Mapping[str, str]) -> Path:
        base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")) / ".config")
        return Path(base).expanduser() / "autostart"

    def render(self, argv: Sequence[str], env: Mapping[str, str]) -> bytes:
        if env:
            argv = ["env", *(f"{k}={v}" for k, v in sorted(env.items())), *argv]
        icon = resources.files("bastion_tray") / "resources" / "tray-ready-64.png"
        lines = [
            "[Desktop Entry]",
            "Type=Application",
            "Name=bastion-tray",
            "Comment=Start the AWS bastion on demand, tunnel through it, stop it when idle",
            f"Exec={desktop_exec(argv)}",
            f"Icon={icon}",
            "Terminal=false",
            "Categories=Network;",
            "X-GNOME-Autostart-enabled=true",
            "X-GNOME-Autostart-Delay=5",  # let the panel (and its tray) come up first
            "X-KDE-autostart-after=panel",
        ]
        return ("\n".join(lines) + "\n").encode()


# ---- macOS: a LaunchAgent ------------------------------------------------------------------


class LaunchAgent(Strategy):
    name = "launchagent"
    platforms = ("darwin",)
    file_name = f"{LAUNCHD_LABEL}.plist"

    def default_dir(self, env: Mapping[str, str]) -> Path:
        return Path(env.get("HOME", "~")).expanduser() / "Library" / "LaunchAgents"

    def render(self, argv: Sequence[str], env: Mapping[str, str]) -> bytes:
        plist: dict[str, object] = {
            "Label": LAUNCHD_LABEL,
            "ProgramArguments": list(argv),
            "RunAtLoad": True,
            "KeepAlive": False,  # Quit means quit, not "restart me"
            "ProcessType": "Interactive",
            "LimitLoadToSessionType": "Aqua",  # only in a GUI login: the tray needs the menu bar
        }
        if env:
            plist["EnvironmentVariables"] = dict(env)
        return plistlib.dumps(plist)


# ---- Windows: a script in the Startup folder -----------------------------------------------


def cmd_quote(arg: str) -> str:
    if arg and not any(c in arg for c in ' \t"&|<>^%()'):
        return arg
    return '"' + arg.replace('"', '""').replace("%", "%%") + '"'


class StartupFolder(Strategy):
    name = "startup"
    platforms = ("win32", "cygwin")
    file_name = f"{APP_ID}.cmd"

    def default_dir(self, env: Mapping[str, str]) -> Path:
        appdata = env.get("APPDATA")
        if not appdata:
            raise UsageError("APPDATA is not set: cannot find the Startup folder")
        return Path(appdata) / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup"

    def render(self, argv: Sequence[str], env: Mapping[str, str]) -> bytes:
        lines = ["@echo off", "rem written by `bastion-tray autostart --enable`"]
        lines += [f'set "{k}={v.replace("%", "%%")}"' for k, v in sorted(env.items())]
        # start: return at once, so the console window closes while the tray keeps running
        lines.append('start "" ' + " ".join(cmd_quote(a) for a in argv))
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")


STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (XdgAutostart, LaunchAgent, StartupFolder)}


def strategy_for(platform: str = sys.platform, name: str | None = None) -> Strategy:
    """The strategy named `name`, else the first that supports `platform`."""
    if name is not None:
        if name not in STRATEGIES:
            raise UsageError(f"unknown autostart kind {name!r} (known: {', '.join(STRATEGIES)})")
        return STRATEGIES[name]()
    for cls in STRATEGIES.values():
        if cls.is_supported(platform):
            return cls()
    raise UsageError(f"autostart is not supported on {platform}")
