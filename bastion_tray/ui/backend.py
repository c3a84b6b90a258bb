"""Choosing and importing the pystray backend, and the few things pystray leaves to us.

pystray picks its backend when imported and fails to import without a display, so it is
imported here, lazily, and nowhere else. `PYSTRAY_BACKEND` wins when set; otherwise pystray's
own order applies: appindicator (StatusNotifierItem: KDE, GNOME with the AppIndicator
extension, XFCE, Cinnamon, MATE, waybar), then gtk (XEmbed tray), then xorg, which shows an
icon but no menu and never receives clicks (pystray issue #151).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from bastion_tray.core.errors import BastionTrayError

log = logging.getLogger("bastion_tray.tray")

GLIB_BACKENDS = {"gtk", "appindicator"}


class TrayUnavailable(BastionTrayError):
    """No tray backend can run here (no display, missing PyGObject, ...)."""

    kind = "tray"


@dataclass
class Backend:
    name: str  # appindicator, gtk, xorg, darwin, win32, dummy
    pystray: ModuleType

    @property
    def icon_class(self) -> Any:
        return self.pystray.Icon

    @property
    def has_menu(self) -> bool:
        return bool(self.pystray.Icon.HAS_MENU)

    def can_notify(self) -> bool:
        """Whether a notification would be seen. pystray's GTK backends claim they can and
        drop the message silently when no notification server is on the session bus."""
        if not self.pystray.Icon.HAS_NOTIFICATION:
            return False
        return self.name not in GLIB_BACKENDS or notification_server_present()

    # ---- the UI thread ------------------------------------------------------------------------

    def call_in_ui(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the UI thread. pystray's GTK backends already marshal their own calls,
        AppKit does not: on macOS every menu and icon change goes through here."""
        if self.name == "darwin":
            from PyObjCTools import AppHelper  # type: ignore[import-not-found,unused-ignore]

            AppHelper.callAfter(fn)
        elif self.name in GLIB_BACKENDS:
            from gi.repository import GLib

            def once() -> bool:
                fn()
                return False  # do not run again

            GLib.idle_add(once)
        else:
            fn()

    def on_signals(self, handler: Callable[[], None]) -> None:
        """Call `handler` on SIGTERM/SIGINT/SIGHUP from the UI loop, so the tray stops cleanly
        (pystray removes its temporary icon files) instead of dying inside the C loop."""
        signals = [signal.SIGTERM, signal.SIGINT]
        if hasattr(signal, "SIGHUP"):
            signals.append(signal.SIGHUP)
        if self.name in GLIB_BACKENDS:
            from gi.repository import GLib

            def on_signal(*_: object) -> bool:
                handler()
                return True  # keep the source: a second signal must stop us too

            for signum in signals:
                GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, on_signal)
        elif threading.current_thread() is threading.main_thread():
            for signum in signals:
                signal.signal(signum, lambda *_: handler())

    def clipboard(self) -> Callable[[str], bool] | None:
        """The tray's own clipboard (GTK serves it while the tray runs), or None."""
        if self.name not in GLIB_BACKENDS:
            return None

        def copy(text: str) -> bool:
            import gi

            gi.require_version("Gdk", "3.0")
            from gi.repository import Gdk, GLib, Gtk

            done = threading.Event()

            def set_text() -> bool:
                try:
                    board = Gtk.Clipboard.get(Gdk.SELECTION_CLIPBOARD)
                    board.set_text(text, -1)
                    board.store()
                finally:
                    done.set()
                return False

            GLib.idle_add(set_text)
            return done.wait(5.0)

        return copy


NOTIFICATIONS = "org.freedesktop.Notifications"


def notification_server_present() -> bool:
    """A notification server owns its name on the session bus, or D-Bus can start one."""
    try:
        from gi.repository import Gio, GLib

        bus = Gio.bus_get_sync(Gio.BusType.SESSION, None)

        def ask(method: str, args: Any, reply: str) -> Any:
            return bus.call_sync("org.freedesktop.DBus", "/org/freedesktop/DBus",
                                 "org.freedesktop.DBus", method, args,
                                 GLib.VariantType(reply), Gio.DBusCallFlags.NONE, 2000,
                                 None).unpack()[0]

        if ask("NameHasOwner", GLib.Variant("(s)", (NOTIFICATIONS,)), "(b)"):
            return True
        return NOTIFICATIONS in ask("ListActivatableNames", None, "(as)")
    except Exception as exc:  # no bus at all: nobody would see a notification
        log.debug("no notification server: %s", exc)
        return False


def _name_the_program() -> None:
    """Before GTK starts: its windows (the menu) and notifications then say "bastion-tray",
    not "__main__.py"."""
    try:
        from gi.repository import GLib
    except Exception:  # no PyGObject: the xorg backend, or none at all
        return
    GLib.set_prgname("bastion-tray")
    GLib.set_application_name("bastion-tray")


def load_backend() -> Backend:
    """Import pystray with the backend chosen by PYSTRAY_BACKEND or pystray's own order."""
    wanted = os.environ.get("PYSTRAY_BACKEND")
    if sys.platform.startswith("linux") and not wanted and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise TrayUnavailable("no graphical session: neither DISPLAY nor WAYLAND_DISPLAY is set",
                              hint="run the tray inside your desktop session; the CLI works "
                                   "without one")
    if sys.platform.startswith("linux"):
        _name_the_program()
    try:
        import pystray
    except Exception as exc:  # ImportError, or Xlib's display errors from the xorg backend
        raise TrayUnavailable(
            f"no tray backend could start{f' (PYSTRAY_BACKEND={wanted})' if wanted else ''}: "
            f"{exc}",
            hint="on Linux install PyGObject (pip install 'bastion-tray[gtk]') and "
                 "gir1.2-ayatanaappindicator3-0.1 (or gir1.2-gtk-3.0 for the gtk backend)"
        ) from None
    name = pystray.Icon.__module__.rsplit(".", 1)[-1].lstrip("_")
    backend = Backend(name, pystray)
    if not backend.has_menu:
        log.warning("the %s tray backend has no menu and gets no clicks (pystray #151): install "
                    "PyGObject with AppIndicator or GTK for a usable tray; the CLI does the "
                    "rest", name)
    else:
        log.info("tray backend: %s", name)
    return backend
