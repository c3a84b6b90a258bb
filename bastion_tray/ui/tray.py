"""The tray: one pystray icon whose image, title and menu follow the daemon's status.

Thin by design: the menu comes from `model.build_menu` (pure), actions from `ActionRunner`
(worker threads), status from `StatusWatcher` (a `subscribe` stream), notifications go through
`notices.Outbox`. This module only turns the model into pystray objects, pushes updates to the
icon and picks where notifications are shown.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bastion_tray.core.paths import AppPaths
from bastion_tray.core.status import Status
from bastion_tray.ui import icons
from bastion_tray.ui.actions import ActionRunner, TrayHooks
from bastion_tray.ui.backend import GLIB_BACKENDS, Backend
from bastion_tray.ui.model import (
    Action,
    Entry,
    IconState,
    Item,
    WarnBefore,
    build_menu,
    icon_state,
    ticking,
    tooltip,
)
from bastion_tray.ui.notices import Notice, Outbox, Sink, notice_for_event
from bastion_tray.ui.watch import StatusWatcher

if TYPE_CHECKING:
    from bastion_tray.service.control_client import ControlClient

log = logging.getLogger("bastion_tray.tray")

STARTING_TEXT = "Connecting to the daemon…"  # until the first status arrives
OFFLINE_TEXT = "Daemon not running — reconnecting…"


def to_pystray(pystray: Any, entries: tuple[Entry, ...],
               invoke: Callable[[Action], object]) -> Any:
    """The model as a `pystray.Menu`; choosing an item calls `invoke(action)`."""
    items = []
    for entry in entries:
        if not isinstance(entry, Item):
            items.append(pystray.Menu.SEPARATOR)
            continue
        if entry.submenu is not None:
            items.append(pystray.MenuItem(entry.label, to_pystray(pystray, entry.submenu, invoke),
                                          enabled=entry.enabled))
            continue
        # a partial, not a closure: pystray inspects a function's argument count
        on_click = (functools.partial(_invoke, invoke, entry.action)
                    if entry.action is not None else None)
        checked = entry.checked
        items.append(pystray.MenuItem(
            entry.label, on_click, enabled=entry.enabled,
            checked=None if checked is None else functools.partial(_constant, checked)))
    return pystray.Menu(*items)


def _invoke(invoke: Callable[[Action], object], action: Action, _icon: Any, _item: Any) -> None:
    invoke(action)


def _constant(value: bool, _item: Any) -> bool:
    return value


def _template_icon_class(base: Any) -> Any:
    """macOS: mark the image a template so the menu bar tints it for light and dark mode.
    pystray has no switch for it; this hooks the one place it builds the NSImage."""

    class TemplateIcon(base):  # type: ignore[misc]
        def _assert_image(self) -> None:
            super()._assert_image()
            image = getattr(self, "_icon_image", None)
            if image is not None and hasattr(image, "setTemplate_"):
                image.setTemplate_(True)

    return TemplateIcon


class TrayApp:
    """A handle: `run()` blocks in the UI loop (on the main thread) until Quit or a signal."""

    def __init__(self, config_path: Path, paths: AppPaths, backend: Backend,
                 connect: Callable[[], ControlClient]) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._status: Status | None = None
        self._received = time.monotonic()  # when the daemon sent `_status`
        self._closed = threading.Event()
        self._connected = False
        self._offline_text = STARTING_TEXT
        self._notice: str | None = None  # the last notice, where the backend cannot notify
        self._menu: tuple[Entry, ...] = ()
        self._state = IconState.OFFLINE
        self._title = "bastion-tray"
        self._warn_before = warn_before_of(config_path)
        self._apply_lock = threading.Lock()
        self._shown: tuple[IconState | None, tuple[Entry, ...] | None] = (None, None)
        self.runner = ActionRunner(config_path, paths, TrayHooks(
            notify=self.notify, before_quit=self._stop_watching, after_quit=self.stop,
            clipboard=backend.clipboard()), connect=connect)
        self.watcher = StatusWatcher(connect, self._on_status, self._on_event)
        icon_class = backend.icon_class
        if backend.name == "darwin":
            icon_class = _template_icon_class(icon_class)
        self.icon = icon_class("bastion-tray", icon=icons.load(IconState.OFFLINE),
                               title="bastion-tray")
        self.outbox = Outbox(self._sinks(paths))
        self._refresh()

    def _sinks(self, paths: AppPaths) -> list[Sink]:
        """Where notices go, best first; the menu line always works."""
        sinks: list[Sink] = []
        if self.backend.name in GLIB_BACKENDS:
            from bastion_tray.ui.notifier import DesktopNotifications

            sinks.append(DesktopNotifications(paths.state_dir / "icons", lambda: self._state))
        elif self.backend.can_notify():
            sinks.append(PystrayNotifications(self.icon))
        sinks.append(MenuLine(self._show_in_menu))
        return sinks

    def run(self) -> None:
        self.backend.on_signals(self.stop)
        try:
            self.icon.run(setup=self._setup)
        except Exception as exc:  # GLib.Error when no notification service ever answered
            log.warning("the tray loop ended with an error: %s", exc)
        finally:
            self._closed.set()
            self.watcher.close()

    def stop(self) -> None:
        """End the tray (the daemon keeps running; Quit is what shuts it down)."""
        self._closed.set()
        self._stop_watching()
        self.icon.stop()

    def _setup(self, icon: Any) -> None:
        icon.visible = True
        self.watcher.start()
        threading.Thread(target=self._tick, name="tray-tick", daemon=True).start()

    def _tick(self) -> None:
        """While a bastion starts, count its seconds up between the daemon's events; during
        an idle warning, count its stop down."""
        while not self._closed.wait(1.0):
            with self._lock:
                status = self._status
                if status is not None:
                    status = status.aged(time.monotonic() - self._received)
                due = self._connected and ticking(status, self._warn_before)
            if due:
                self._refresh()

    def _stop_watching(self) -> None:
        threading.Thread(target=self.watcher.close, name="tray-unwatch", daemon=True).start()

    # ---- status → icon, title, menu -------------------------------------------------------

    def _on_status(self, status: Status | None, connected: bool, _reason: str | None) -> None:
        with self._lock:
            self._status, self._connected = status, connected
            self._received = time.monotonic()
            if not connected:
                self._offline_text = OFFLINE_TEXT
        self._refresh()

    def _on_event(self, event: dict[str, Any]) -> None:
        notice = notice_for_event(event)
        if notice is not None:
            self.notify(notice)

    def _refresh(self) -> None:
        """Recompute the model from the status; the UI thread then shows the newest one."""
        with self._lock:
            status = self._status
            if status is not None:
                status = status.aged(time.monotonic() - self._received)
            connected, notice = self._connected, self._notice
            self._menu = build_menu(status, connected=connected, notice=notice,
                                    offline_text=self._offline_text,
                                    warn_before=self._warn_before)
            self._state = icon_state(status, connected)
            self._title = tooltip(status, connected, notice, warn_before=self._warn_before)
        self.backend.call_in_ui(self._apply)

    def _apply(self) -> None:
        """Push the newest model to the icon, touching only what changed since last shown
        (reads the newest, so updates applied out of order still end right)."""
        with self._apply_lock:
            with self._lock:
                menu, state, title = self._menu, self._state, self._title
            if state != self._shown[0]:
                self.icon.icon = icons.load(state)
            if menu != self._shown[1]:
                self.icon.menu = to_pystray(self.backend.pystray, menu, self.runner.submit)
            self._shown = (state, menu)
            self.icon.title = title

    # ---- notifications ---------------------------------------------------------------------

    def notify(self, notice: Notice) -> None:
        """Show `notice` (from any thread); notices are shown in the order they come."""
        shown = self.outbox.post(notice)
        if shown is not None:
            log.info("notice: %s — %s", shown.title, shown.message.replace("\n", " "))

    def _show_in_menu(self, line: str) -> None:
        with self._lock:
            self._notice = line
        self._refresh()


class PystrayNotifications:
    """pystray's own notify() (macOS, Windows): one at a time, each replaces the last."""

    replaces = True

    def __init__(self, icon: Any) -> None:
        self.icon = icon

    def show(self, notice: Notice) -> bool:
        try:
            self.icon.notify(notice.message, notice.title)
            return True
        except Exception as exc:  # e.g. osascript missing; the menu carries it instead
            log.warning("cannot show a notification: %s", exc)
            return False


class MenuLine:
    """The last notice as a line of the menu and the tooltip, where nothing else shows it."""

    replaces = True

    def __init__(self, show_line: Callable[[str], None]) -> None:
        self.show_line = show_line

    def show(self, notice: Notice) -> bool:
        self.show_line(notice.line)
        return True


def warn_before_of(config_path: Path) -> WarnBefore:
    """Each profile's warn_before, for the idle warning in the status lines; a config that
    does not load gives none (the daemon's own reading is what counts)."""
    from bastion_tray.core.config import load_config
    from bastion_tray.core.errors import BastionTrayError

    try:
        config = load_config(config_path)
    except BastionTrayError:
        return {}
    return {name: p.warn_before for name, p in config.profiles.items()}


def run_tray(config_path: Path, paths: AppPaths, connect: Callable[[], ControlClient]) -> int:
    from bastion_tray.ui.backend import load_backend

    backend = load_backend()
    TrayApp(config_path, paths, backend, connect).run()
    return 0
