"""The desktop around the tray: a terminal for "Open shell", the file opener, the clipboard.

Each is a platform strategy chosen at the call, and each decision is a pure function of the
platform, the config and what `which` finds, so tests check them without a desktop.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bastion_tray.core.errors import BastionTrayError

Which = Callable[[str], str | None]

# Linux terminals in order of preference, each with the flag after which its command follows
LINUX_TERMINALS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("x-terminal-emulator", ("-e",)),  # Debian's alternative: the user's chosen terminal
    ("gnome-terminal", ("--",)),
    ("konsole", ("-e",)),
    ("xfce4-terminal", ("-x",)),
    ("kitty", ()),
    ("alacritty", ("-e",)),
    ("xterm", ("-e",)),
)


class DesktopError(BastionTrayError):
    """No way to do a desktop thing here (no terminal, no opener)."""

    kind = "desktop"


def _which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


def shell_command(config_path: Path, profile: str, host: str,
                  platform: str = sys.platform) -> list[str]:
    """`bastion-tray shell PROFILE HOST` with this interpreter and this config file.

    On POSIX a failed session keeps its window open until Enter, so the error stays readable
    instead of vanishing with the terminal.
    """
    argv = [sys.executable, "-m", "bastion_tray", "--config", str(config_path.resolve()),
            "shell", profile, host]
    if platform == "win32":
        return argv
    hold = ('"$@"; rc=$?; if [ "$rc" -ne 0 ]; then '
            'printf "\\n[bastion-tray shell exited %s] press Enter to close " "$rc"; '
            'read _; fi; exit "$rc"')
    return ["/bin/sh", "-c", hold, "bastion-tray-shell", *argv]


def terminal_argv(command: Sequence[str], configured: Sequence[str] | None = None, *,
                  platform: str = sys.platform, which: Which = _which) -> list[str]:
    """How to run `command` in a new terminal window.

    `[settings] terminal` (an argv prefix such as ["x-terminal-emulator", "-e"]) wins; else
    the platform's default: the first Linux terminal on PATH, Terminal.app via osascript,
    Windows Terminal (`wt`) or `cmd /c start`.
    """
    if configured:
        return [*configured, *command]
    if platform == "darwin":
        script = (f'tell application "Terminal" to do script {_applescript(shlex.join(command))}'
                  '\ntell application "Terminal" to activate')
        return ["osascript", "-e", script]
    if platform == "win32":
        if which("wt"):
            return ["wt", "new-tab", "--title", "bastion-tray", *command]
        return ["cmd", "/c", "start", "bastion-tray", *command]
    for name, flag in LINUX_TERMINALS:
        path = which(name)
        if path:
            return [path, *flag, *command]
    raise DesktopError("no terminal found for Open shell (looked for "
                       f"{', '.join(n for n, _ in LINUX_TERMINALS)})",
                       hint='set terminal = ["your-terminal", "-e"] under [settings] '
                            "in the config file")


def _applescript(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def opener_argv(path: Path, *, platform: str = sys.platform,
                which: Which = _which) -> list[str] | None:
    """The command that opens `path` in the user's default app; None on Windows
    (os.startfile does it)."""
    if platform == "win32":
        return None
    if platform == "darwin":
        return ["open", str(path)]
    for tool in ("xdg-open", "gio", "kde-open5"):
        found = which(tool)
        if found:
            return [found, "open", str(path)] if tool == "gio" else [found, str(path)]
    raise DesktopError(f"cannot open {path}: no xdg-open on PATH",
                       hint="install xdg-utils, or open the file yourself")


def clipboard_argv(*, platform: str = sys.platform, which: Which = _which,
                   env: dict[str, str] | None = None) -> list[str] | None:
    """A command that puts its stdin on the clipboard, or None when none fits here."""
    env = dict(os.environ) if env is None else env
    candidates: list[list[str]] = []
    if platform == "darwin":
        candidates = [["pbcopy"]]
    elif platform == "win32":
        candidates = [["clip"]]
    else:
        if env.get("WAYLAND_DISPLAY"):
            candidates.append(["wl-copy"])
        if env.get("DISPLAY"):
            candidates += [["xclip", "-selection", "clipboard"], ["xsel", "--clipboard", "--input"]]
    for argv in candidates:
        found = which(argv[0])
        if found:
            return [found, *argv[1:]]
    return None


def spawn(argv: Sequence[str], watch: float = 3.0) -> subprocess.Popen[bytes]:
    """Start a desktop program detached from the tray (its own session, no stdin).

    Openers and terminals fail fast when they fail ("xdg-open: no method available"), so
    this waits up to `watch` seconds (we are on a worker thread) and turns an early non-zero
    exit into a DesktopError carrying what the program said. The process is reaped when it
    exits, so a long-lived tray collects no zombies.
    """
    import tempfile
    import threading

    detach: dict[str, Any] = {"start_new_session": True}
    if sys.platform == "win32":
        detach = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=errors, close_fds=True,
                                    **detach)
        except OSError as exc:
            raise DesktopError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        try:
            code = proc.wait(watch)
        except subprocess.TimeoutExpired:
            threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
            return proc
        if code != 0:
            errors.seek(0)
            said = errors.read().decode(errors="replace").strip().splitlines()
            raise DesktopError(f"{Path(argv[0]).name} failed (exit {code})"
                               + (f": {said[-1]}" if said else ""))
    return proc


def open_path(path: Path) -> None:
    argv = opener_argv(path)
    if argv is None:
        os.startfile(path)  # type: ignore[attr-defined]  # Windows only
    else:
        spawn(argv)


def copy_text(text: str, in_process: Callable[[str], bool] | None = None) -> str:
    """Put `text` on the clipboard; returns how. `in_process` (the tray's own GTK clipboard,
    which it serves while it runs) goes first, then the platform's tool; raises DesktopError
    when neither is there."""
    if in_process is not None and in_process(text):
        return "gtk"
    argv = clipboard_argv()
    if argv is None:
        raise DesktopError("no clipboard tool found (wl-copy, xclip, xsel, pbcopy or clip)",
                           hint="install wl-clipboard or xclip, or use Show ssh config")
    # the X tools fork a process that serves the selection; it must not hold our pipes
    try:
        subprocess.run(argv, input=text.encode(), check=True, timeout=10,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DesktopError(f"cannot copy with {argv[0]}: {exc}") from None
    return Path(argv[0]).name
