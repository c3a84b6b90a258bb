"""Desktop notifications on Linux, sent to org.freedesktop.Notifications ourselves.

pystray's GTK backends keep one notification id and replace it on every `notify()`, with the
tray's current icon: a second notice that comes right after the first (the daemon's "bastion
ready" and the action's "db connected", 1 ms apart) takes its place and the first is never
seen. Here each notice is a notification of its own (replaces_id 0), with its own icon.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion_tray.ui import icons
from bastion_tray.ui.model import IconState
from bastion_tray.ui.notices import Notice

log = logging.getLogger("bastion_tray.tray")

NOTIFICATIONS = "org.freedesktop.Notifications"
OBJECT_PATH = "/org/freedesktop/Notifications"
APP_NAME = "bastion-tray"


class DesktopNotifications:
    """A `Sink` of notices.Outbox: one notification per notice, never replacing another."""

    replaces = False

    def __init__(self, icon_dir: Path, current_icon: Callable[[], IconState],
                 timeout: float = 5.0) -> None:
        self.icon_dir = icon_dir  # where icon files go when the package is not on disk
        self.current_icon = current_icon  # for a notice without an icon of its own
        self.timeout_ms = int(timeout * 1000)
        self._bus: Any = None
        self._markup: bool | None = None  # whether the server reads the body as markup
        self._lock = threading.Lock()

    def show(self, notice: Notice) -> bool:
        try:
            with self._lock:
                nid = self._notify(notice)
            log.debug("notification %d: %s", nid, notice.title)
            return True
        except Exception as exc:  # no server, a bus gone away: the next sink shows it
            log.warning("cannot show a desktop notification: %s", exc)
            return False

    def _notify(self, notice: Notice) -> int:
        from gi.repository import Gio, GLib

        if self._bus is None:
            self._bus = Gio.bus_get_sync(Gio.BusType.SESSION, None)
        if self._markup is None:
            self._markup = "body-markup" in self._call("GetCapabilities", None, "(as)")
        icon = str(icons.icon_file(notice.icon or self.current_icon(), self.icon_dir))
        body = GLib.markup_escape_text(notice.message) if self._markup else notice.message
        hints = {"image-path": GLib.Variant("s", icon)}
        args = GLib.Variant("(susssasa{sv}i)",
                            (APP_NAME, 0, icon, notice.title, body, [], hints, -1))
        nid: int = self._call("Notify", args, "(u)")
        return nid

    def _call(self, method: str, args: Any, reply: str) -> Any:
        from gi.repository import Gio, GLib

        return self._bus.call_sync(NOTIFICATIONS, OBJECT_PATH, NOTIFICATIONS, method, args,
                                   GLib.VariantType(reply), Gio.DBusCallFlags.NONE,
                                   self.timeout_ms, None).unpack()[0]
