"""A throwaway X desktop for testing the tray for real: Xvfb, a session bus, dunst, trayer.

The recipe is /work/shared/notes/tray-testing.md (verified on this machine). `XSession` is a
handle: every process it starts is recorded by pid and killed by `close()`, which then checks
that none of them, and nothing else started inside the session, is still alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.app import alive, wait_until

TOOLS = {  # executable → Debian package
    "Xvfb": "xvfb", "dbus-launch": "dbus-x11", "dunst": "dunst", "dunstctl": "dunst",
    "trayer": "trayer", "xdotool": "xdotool", "xwininfo": "x11-utils", "import": "imagemagick",
}
TRAY_HEIGHT = 32


TYPELIBS = {("Gtk", "3.0"): "gir1.2-gtk-3.0",
            ("AyatanaAppIndicator3", "0.1"): "gir1.2-ayatanaappindicator3-0.1"}


def missing_tools() -> list[str]:
    """What to install for the tools that are not here: Debian packages, PyGObject."""
    missing = {pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None}
    try:
        import gi
    except ImportError:
        return sorted(missing | {"PyGObject (pip install -e '.[gtk]')"})
    for (namespace, version), pkg in TYPELIBS.items():
        try:
            gi.require_version(namespace, version)
        except ValueError:
            missing.add(pkg)
    return sorted(missing)


@dataclass(frozen=True)
class Window:
    wid: int
    name: str
    x: int  # absolute, on the root window
    y: int
    width: int
    height: int
    depth: int  # 0: a top-level window

    @property
    def center(self) -> tuple[int, int]:
        return self.x + self.width // 2, self.y + self.height // 2


# `     0x200003 "panel": ("trayer" "trayer")  100x32+0+0  +0+0`
_TREE_LINE = re.compile(r'^(?P<indent>\s*)(?P<wid>0x[0-9a-f]+) (?P<name>.*?):?\s*(\(.*\))?\s+'
                        r'(?P<w>\d+)x(?P<h>\d+)[+-]-?\d+[+-]-?\d+\s+\+(?P<x>-?\d+)\+(?P<y>-?\d+)$')


class XSession:
    def __init__(self, workdir: Path, size: tuple[int, int] = (800, 600)) -> None:
        self.workdir = workdir
        self.size = size
        self.display = ""
        self.env: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pids: dict[str, int] = {}  # everything started, including dbus-daemon
        self.bus_address = ""

    # ---- start and stop ----------------------------------------------------------------------

    def start(self) -> XSession:
        try:
            self._start_xvfb()
            self._start_bus()
            self._spawn("dunst", ["dunst"])
            wait_until(lambda: self.run(["dunstctl", "count"], check=False).returncode == 0,
                       10, "dunst to answer on the session bus")
            self._spawn("trayer", ["trayer", "--edge", "top", "--align", "left",
                                   "--widthtype", "request", "--height", str(TRAY_HEIGHT),
                                   "--SetDockType", "false"])
            wait_until(self._tray_selection_owned, 10, "trayer to own _NET_SYSTEM_TRAY_S0")
        except BaseException:
            self.close()
            raise
        return self

    def _start_xvfb(self) -> None:
        read_fd, write_fd = os.pipe()
        log = open(self.workdir / "xvfb.log", "wb")  # noqa: SIM115 - closed with the process
        try:  # -displayfd: Xvfb picks a free display itself and tells us which when ready
            proc = subprocess.Popen(
                ["Xvfb", "-displayfd", str(write_fd), "-screen", "0",
                 f"{self.size[0]}x{self.size[1]}x24", "-nolisten", "tcp"],
                pass_fds=(write_fd,), stdout=log, stderr=log, start_new_session=True)
        finally:
            os.close(write_fd)
            log.close()
        self.procs["Xvfb"], self.pids["Xvfb"] = proc, proc.pid
        with os.fdopen(read_fd, "rb") as pipe:
            number = pipe.readline().strip().decode()
        if not number.isdigit() or proc.poll() is not None:
            raise RuntimeError(f"Xvfb did not start: {(self.workdir / 'xvfb.log').read_text()}")
        self.display = f":{number}"
        # A display someone else owns would make Xvfb exit right away: make sure it is ours.
        time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"Xvfb on {self.display} died: "
                               f"{(self.workdir / 'xvfb.log').read_text()}")
        home = self.workdir / "home"
        runtime = self.workdir / "runtime"
        for d in (home, runtime):
            d.mkdir(mode=0o700, exist_ok=True)
        self.env = {
            "DISPLAY": self.display,
            "NO_AT_BRIDGE": "1",  # else GTK starts at-spi helpers that outlive the test
            "GSETTINGS_BACKEND": "memory",  # else GIO activates dconf-service on the bus
            "XDG_CONFIG_HOME": str(home / "config"),  # no user dunstrc or gtk settings
            "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_RUNTIME_DIR": str(runtime),
        }

    def _start_bus(self) -> None:
        out = self.run(["dbus-launch", "--sh-syntax"]).stdout
        values = dict(re.findall(r"^(\w+)='?([^';\n]*)'?;", out, re.M))
        self.bus_address = values["DBUS_SESSION_BUS_ADDRESS"]
        self.pids["dbus-daemon"] = int(values["DBUS_SESSION_BUS_PID"])
        self.env["DBUS_SESSION_BUS_ADDRESS"] = self.bus_address

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - the child holds it
        with log:
            proc = subprocess.Popen(argv, env=self.child_env(), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name], self.pids[name] = proc, proc.pid
        return proc

    def child_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) inside this X session."""
        return {**(os.environ if base is None else base), **self.env}

    def close(self) -> None:
        """Kill everything, newest first; then check that nothing survived."""
        for name in reversed(list(self.pids)):
            self._kill(name, self.pids[name])
        survivors = {n: p for n, p in self.pids.items() if alive(p)}
        survivors.update(self.session_processes())
        if survivors:
            raise AssertionError(f"processes outlived the X session: {survivors}")

    def _kill(self, name: str, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        proc = self.procs.get(name)
        try:
            if proc is not None:
                proc.wait(5)
            else:
                wait_until(lambda: not alive(pid), 5, f"{name} ({pid}) to exit")
        except (subprocess.TimeoutExpired, AssertionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if proc is not None:
                proc.wait(5)

    def session_processes(self) -> dict[str, int]:
        """Live processes of this user whose environment says they belong to this session."""
        if not self.display:
            return {}
        marks = [f"DISPLAY={self.display}".encode()]
        if self.bus_address:
            marks.append(f"DBUS_SESSION_BUS_ADDRESS={self.bus_address}".encode())
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if entry.stat().st_uid != os.getuid():
                    continue
                environ = (entry / "environ").read_bytes().split(b"\0")
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if any(m in environ for m in marks) and alive(int(entry.name)):
                found[f"{comm}[{entry.name}]"] = int(entry.name)
        return found

    def __enter__(self) -> XSession:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- looking and poking ------------------------------------------------------------------

    def run(self, argv: list[str], check: bool = True,
             timeout: float = 10) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=self.child_env(), capture_output=True, text=True,
                              check=check, timeout=timeout)

    def _tray_selection_owned(self) -> bool:
        from Xlib import X, display  # python-xlib comes with pystray on Linux

        d = display.Display(self.display)
        try:
            return d.get_selection_owner(d.intern_atom("_NET_SYSTEM_TRAY_S0")) != X.NONE
        finally:
            d.close()

    def windows(self) -> list[Window]:
        """Every window of the tree with its absolute geometry and depth below the root."""
        for attempt in range(5):  # a window destroyed mid-walk makes xwininfo fail: retry
            tree = self.run(["xwininfo", "-root", "-tree"], check=False)
            if tree.returncode == 0:
                break
            time.sleep(0.05 * (attempt + 1))
        else:
            raise RuntimeError(f"xwininfo -root -tree keeps failing: {tree.stderr.strip()}")
        out = tree.stdout
        found = []
        for line in out.splitlines():
            m = _TREE_LINE.match(line)
            if m:
                found.append(Window(int(m["wid"], 16), m["name"].strip(), int(m["x"]),
                                    int(m["y"]), int(m["w"]), int(m["h"]),
                                    (len(m["indent"]) - 5) // 3))
        return found

    def top_level(self) -> list[Window]:
        return [w for w in self.windows() if w.depth == 0]

    def mapped(self, wid: int) -> bool:
        out = self.run(["xwininfo", "-id", hex(wid)], check=False).stdout
        return "IsViewable" in out

    def tray_icon(self) -> Window | None:
        """The icon docked in trayer, once it is at least 16 px wide (it docks at 1 px)."""
        tree = self.windows()
        trayer = next((i for i, w in enumerate(tree) if w.depth == 0 and w.name == '"panel"'),
                      None)
        if trayer is None:
            return None
        for w in tree[trayer + 1:]:
            if w.depth == 0:
                break
            if w.width >= 16 and w.height >= 16 and w.height <= TRAY_HEIGHT and self.mapped(w.wid):
                return w
        return None

    def xdotool(self, *args: str) -> None:
        self.run(["xdotool", *args])

    def screenshot(self, path: Path, crop: tuple[int, int, int, int] | None = None) -> Path:
        """The root window (optionally cropped to x, y, width, height) as a PNG."""
        path.parent.mkdir(parents=True, exist_ok=True)
        argv = ["import", "-window", "root"]
        if crop:
            x, y, w, h = crop
            argv += ["-crop", f"{w}x{h}+{x}+{y}", "+repage"]
        self.run([*argv, str(path)], timeout=20)
        return path

    def notifications(self) -> list[dict[str, Any]]:
        """dunst's history, newest first: [{"summary": ..., "body": ..., "appname": ...,
        "icon_path": ..., "id": ...}]."""
        out = self.run(["dunstctl", "history"]).stdout
        items = json.loads(out)["data"][0]
        return [{k: v.get("data") for k, v in item.items()} for item in items]

    def seen_notifications(self) -> list[dict[str, Any]]:
        """Every notification shown so far, oldest first: those on screen are closed first, so
        they join the history (a replaced one is gone for good, as it is for the user)."""
        self.run(["dunstctl", "close-all"])
        return list(reversed(self.notifications()))

    def wait_for_notifications(self, expected: Sequence[tuple[str, str]],
                               timeout: float) -> list[dict[str, Any]]:
        """For each (summary part, body part), the first notification that contains both,
        waiting until every one has been shown. Matched by content, never by a count, so a
        notice that comes early, late or between others is found all the same."""
        def match(seen: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
            found = [next((n for n in seen if summary in str(n.get("summary"))
                           and body in str(n.get("body"))), None) for summary, body in expected]
            return None if None in found else [n for n in found if n is not None]

        deadline = time.monotonic() + timeout
        while True:
            seen = self.seen_notifications()
            found = match(seen)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                shown = [(n.get("summary"), n.get("body")) for n in seen]
                raise AssertionError(f"timed out after {timeout} s waiting for notifications "
                                     f"{list(expected)}; shown: {shown}")
            time.sleep(0.1)
