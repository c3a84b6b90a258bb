"""The tray for real: its icon docked in trayer on Xvfb (gtk and appindicator backends),
right-clicked with xdotool, its menu driven by keyboard.

Recipe and facts: /work/shared/notes/tray-testing.md. The tray runs as `bastion-tray tray`
against the sandbox VPC; it starts its own daemon. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageStat

from bastion_tray.core.status import Status
from bastion_tray.sandbox import Sandbox
from bastion_tray.ui import icons
from bastion_tray.ui.model import IconState, Item, build_menu
from tests.support.app import App, alive, wait_until
from tests.support.xsession import Window, XSession, missing_tools

pytestmark = pytest.mark.timeout(150)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def xsession(tmp_path: Path) -> Iterator[XSession]:
    missing = missing_tools()
    if missing:
        message = "the tray window test needs: " + ", ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # CI must not go green by skipping the real-window test
        pytest.skip(message)
    with XSession(tmp_path) as xs:  # its close() asserts that nothing it started survives
        yield xs


class Tray:
    """`bastion-tray tray` in the X session, with the sandbox app's environment."""

    def __init__(self, app: App, xs: XSession, log: Path, backend: str) -> None:
        self.log = log  # stdout and stderr: GTK's complaints, a crash
        self.app_log = app.home / "log" / "tray.log"  # the tray's own log
        env = xs.child_env(app.env)
        env["PYSTRAY_BACKEND"] = backend
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "bastion_tray", "-v", "tray"],
                                         env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def output(self) -> str:
        logs = [p.read_text(errors="replace") for p in (self.log, self.app_log) if p.exists()]
        return "\n".join(logs)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"the tray ignored SIGTERM:\n{self.output()}") from None


def shown_state(xs: XSession, icon: Window, shot: Path) -> IconState:
    """Which state's icon is on screen: the one whose mean colour is nearest to the pixels."""
    xs.screenshot(shot, crop=(icon.x, icon.y, icon.width, icon.height))
    with Image.open(shot) as taken:
        pixels = taken.convert("RGB")
        background = pixels.getpixel((0, 0))
        seen = ImageStat.Stat(pixels).mean

    def distance(state: IconState) -> float:
        art = icons.load(state, 32).resize(pixels.size, Image.Resampling.LANCZOS)
        flat = Image.new("RGB", art.size, background)
        flat.paste(art, (0, 0), art)
        mean = ImageStat.Stat(flat).mean
        return sum((a - b) ** 2 for a, b in zip(seen, mean, strict=True))

    return min(IconState, key=distance)


def open_menu(xs: XSession, tmp_path: Path) -> Window:
    """Right-click the icon; the menu is the tray's top-level window that gets mapped.

    GTK keeps a menu's window between pop-ups (unmapped), so "mapped now, not before the
    click" is the test, not "new". A click that opens nothing is retried once with a warning
    (screen and window tree kept in test-artifacts/), as a user would click again.
    """
    for attempt in (1, 2):
        icon = wait_until(xs.tray_icon, 5, "the icon to be docked")
        shown_before = {w.wid for w in xs.top_level() if xs.mapped(w.wid)}
        xs.xdotool("mousemove", str(icon.center[0]), str(icon.center[1]), "click", "3")

        def menu(before: set[int] = shown_before) -> Window | None:
            return next((w for w in xs.top_level()
                         if w.wid not in before and w.name == '"bastion-tray"'
                         and w.height > 50 and w.width > 100 and xs.mapped(w.wid)), None)

        try:
            found: Window = wait_until(menu, 3, "the menu window to appear")
            return found
        except AssertionError:
            stem = ARTIFACTS / f"no-menu-{tmp_path.name}-{attempt}"
            xs.screenshot(stem.with_suffix(".png"))
            stem.with_suffix(".txt").write_text(
                f"icon {icon}\nmapped before the click: {sorted(map(hex, shown_before))}\n"
                + xs.run(["xwininfo", "-root", "-tree"], check=False).stdout)
            if attempt == 2:
                raise
            warnings.warn(f"a right-click on {icon} opened no menu; clicking again "
                          f"(see {stem}.png/.txt)", stacklevel=2)
    raise AssertionError("unreachable")


def choose(xs: XSession, snapshot: dict[str, Any], label: str) -> None:
    """Pick `label` in the open menu by keyboard: GTK skips disabled items, so it is the
    n-th enabled item of the model the tray built from the same (real) status."""
    status = Status.from_json({"profiles": {"foo": snapshot}})
    enabled = [e.label for e in build_menu(status) if isinstance(e, Item) and e.enabled]
    index = next(i for i, text in enumerate(enabled) if text.startswith(label))
    xs.xdotool("key", *["Down"] * (index + 1), "Return")


def clipboard(xs: XSession) -> str:
    """The CLIPBOARD selection's text, read by a GTK client inside the session."""
    read = ("import gi; gi.require_version('Gtk', '3.0'); from gi.repository import Gdk, Gtk; "
            "print(Gtk.Clipboard.get(Gdk.SELECTION_CLIPBOARD).wait_for_text() or '')")
    return xs.run([sys.executable, "-c", read], check=False).stdout


def screenshot_with_menu(xs: XSession, menu: Window, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    width = min(xs.size[0], max(menu.x + menu.width, 120) + 8)
    height = min(xs.size[1], menu.y + menu.height + 8)
    return xs.screenshot(ARTIFACTS / name, crop=(0, 0, width, height))


# appindicator is what users get by default; without a StatusNotifierWatcher (as here) it
# falls back to the same XEmbed tray as gtk, so both run the same script.
@pytest.mark.parametrize("backend", ["gtk", "appindicator"])
def test_right_click_connect_db_opens_the_forward_and_notifies(
        xsession: XSession, fresh_sandbox: Sandbox, tmp_path: Path, backend: str) -> None:
    app = App(fresh_sandbox)
    tray = Tray(app, xsession, tmp_path / "tray.log", backend)
    daemon_pid = None
    try:
        icon = wait_until(xsession.tray_icon, 20, "the tray icon to dock at >= 16 px")
        # the tray starts the daemon; the offline and stopped icons are both grey, so the
        # colour alone cannot tell them apart: wait for the daemon first, then the icon
        daemon_pid = wait_until(
            lambda: (pid := app.daemon_pid()) is not None and alive(pid) and pid, 30,
            "the tray to start a daemon")
        wait_until(lambda: app.status()["bastion"]["state"] == "stopped", 30,
                   "the daemon to report the stopped bastion")
        wait_until(lambda: shown_state(xsession, icon, tmp_path / "icon.png")
                   is IconState.STOPPED, 30, "the icon to show the stopped bastion")
        menu = open_menu(xsession, tmp_path)
        shot = screenshot_with_menu(xsession, menu, f"tray-{backend}-menu-stopped.png")
        assert shot.stat().st_size > 0
        choose(xsession, app.status(), "Connect db")  # the first enabled item

        # the sandbox bastion boots in ~1.5 s: long enough to see the tray wait for it
        wait_until(lambda: shown_state(xsession, icon, tmp_path / "icon.png")
                   is IconState.STARTING, 10, "the icon to show the starting bastion")
        menu = open_menu(xsession, tmp_path)
        screenshot_with_menu(xsession, menu, f"tray-{backend}-menu-starting.png")
        xsession.xdotool("key", "Escape")

        def connected() -> dict[str, Any] | None:
            status = app.status()
            ok = (status["forwards"]["db"]["listening"]
                  and status["bastion"]["state"] == "running"
                  and status["bastion"]["ssh"] == "connected")
            return status if ok else None

        status = wait_until(connected, 40, "the db forward listening with the bastion running")
        assert status["bastion"]["host"] == app.sandbox.bastion_host

        local = status["forwards"]["db"]["local"]
        # the daemon's "bastion ready in 1.8 s" and the menu action's "db is ready at
        # 127.0.0.1:…" come within milliseconds, in either order (issue 8 item 7: dunst once
        # held only one): each must be a notification of its own, with its own icon
        try:
            ready, db = xsession.wait_for_notifications(
                [("foo: bastion ready", "ready in"), ("foo: db connected", local)], 15)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\ntray: {tray.output()}") from None
        assert ready["id"] != db["id"], (ready, db)
        assert Path(str(ready["icon_path"])).name.startswith("tray-ready-"), ready
        assert Path(str(db["icon_path"])).name.startswith("tray-connected-"), db
        assert ready["appname"] == db["appname"] == "bastion-tray"

        wait_until(lambda: shown_state(xsession, icon, tmp_path / "icon.png")
                   is IconState.READY, 15, "the icon to show the ready bastion")
        menu = open_menu(xsession, tmp_path)
        screenshot_with_menu(xsession, menu, f"tray-{backend}-menu-ready.png")
        choose(xsession, app.status(), "Copy ssh config")  # no xclip here: GTK's clipboard
        copied = wait_until(lambda: "Host foo-bastion" in clipboard(xsession)
                            and clipboard(xsession), 10, "the ssh config on the clipboard")
        assert "ProxyCommand" in copied and "Host foo-appserver" in copied

        host, _, port = status["forwards"]["db"]["local"].rpartition(":")
        with socket.create_connection((host, int(port)), timeout=10):  # a client, e.g. MySQL
            wait_until(lambda: shown_state(xsession, icon, tmp_path / "icon.png")
                       is IconState.CONNECTED, 15, "the icon to show the open connection")
            menu = open_menu(xsession, tmp_path)
            screenshot_with_menu(xsession, menu, f"tray-{backend}-menu-connected.png")
            xsession.xdotool("key", "Escape")
        assert f"tray backend: {backend}" in tray.output()

        menu = open_menu(xsession, tmp_path)
        xsession.xdotool("key", "Up", "Return")  # the last item: "Quit (stops the bastion …)"
        assert tray.proc.wait(20) == 0, tray.output()
        wait_until(lambda: not alive(daemon_pid), 20, "the daemon to shut down on Quit")
        assert app.instance_state() == "stopped"  # it had started the bastion, so it stops it
    except BaseException:  # keep what explains it: the tray's and the daemon's logs
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / f"tray-{backend}-failure.log").write_text(
            f"--- tray\n{tray.output()}\n--- daemon\n{app.log()}\n")
        raise
    finally:
        code = tray.stop()
        app.close()
    assert code == 0, tray.output()
    assert daemon_pid is not None and not alive(daemon_pid)
    assert "Traceback" not in tray.output(), tray.output()


NOTIFY = """
import json, sys
from pathlib import Path
from bastion_tray.ui.model import IconState
from bastion_tray.ui.notices import notice_for_event
from bastion_tray.ui.notifier import DesktopNotifications

# the tray shows CONNECTED meanwhile: no notification may borrow that
sink = DesktopNotifications(Path(sys.argv[1]), lambda: IconState.CONNECTED)
for event in json.loads(sys.argv[2]):
    assert sink.show(notice_for_event(event)), event
"""


def test_each_notification_keeps_the_icon_of_the_event_it_announces(
        xsession: XSession, tmp_path: Path) -> None:
    """Issue 10: on the real notification server (dunst), every notice is a notification of
    its own, with the icon of its event's state — not the tray's icon, none replacing another."""
    events = [{"type": "ready", "profile": "foo", "seconds": 1.5},
              {"type": "warn", "profile": "foo", "stops_in": 110},
              {"type": "stopped", "profile": "foo", "state": "stopped", "reason": "idle 30 min"},
              {"type": "disconnected", "profile": "foo", "reason": "EOF"},
              {"type": "error", "profile": "foo", "message": "boom"}]
    expected = [IconState.READY, IconState.STARTING, IconState.STOPPED, IconState.LINK_DOWN,
                IconState.ERROR]
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", NOTIFY, str(tmp_path / "icons"),
                           json.dumps(events)], env=xsession.child_env(), cwd=root,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    shown = xsession.wait_for_notifications(
        [("foo: bastion ready", "ready in 1.5 s"), ("foo: idle", "stops in 2 min"),
         ("foo: bastion stopped", "idle 30 min"), ("foo: SSH link lost", "EOF"),
         ("foo: error", "boom")], 15)
    assert len({n["id"] for n in shown}) == len(events)  # none replaced another
    for notification, state in zip(shown, expected, strict=True):
        assert Path(str(notification["icon_path"])).name == icons.file_name(state, 64), \
            (notification, state)
    assert not any(Path(str(n["icon_path"])).name.startswith("tray-connected-") for n in shown)
