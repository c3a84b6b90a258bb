"""The tray menu as plain data, built by pure functions from the daemon's typed status.

Nothing here touches pystray, a display or the daemon: `build_menu(status, ...)` returns
`Item`s (label, enabled, checked, action) and the tray's adapter turns them into a native
menu. An `Action` is data too ("connect foo db"); the runner in actions.py carries it out.
The status lines are core.status's, the same the CLI and the demo print.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from bastion_tray.core.cost import tray_line
from bastion_tray.core.status import ProfileStatus, Status
from bastion_tray.core.statusline import status_line

WarnBefore = Mapping[str, float]  # profile → its warn_before, for the idle warning's wording


class IconState(enum.StrEnum):
    """What the one tray icon says at a glance; the values name the icon files. Green
    (READY) and blue (CONNECTED) mean the daemon's SSH link to the bastion is up, never less."""

    STOPPED = "stopped"  # every bastion stopped (or nothing to show)
    STARTING = "starting"  # waiting for a bastion: starting, waiting for SSH, connecting
    READY = "ready"  # a bastion runs and SSH is connected, nothing flows yet
    CONNECTED = "connected"  # SSH is connected and connections are open through it
    ERROR = "error"  # a profile failed: see its status line
    OFFLINE = "offline"  # the daemon is not answering; the tray reconnects
    # the bastion runs (and costs) but this daemon holds no SSH link to it: after `ssh
    # foo-bastion`, a daemon restart, a lost link, or while teammates keep it up. Declared
    # after STARTING: until its own icon is drawn it shows STARTING's (icons.STAND_INS)
    LINK_DOWN = "link-down"


@dataclass(frozen=True)
class Action:
    """What a menu item does, as data: `op` with the profile and target it applies to."""

    op: str  # connect, start, stop, keep, shell, copy-ssh-config, show-ssh-config, ...
    profile: str | None = None
    target: str | None = None  # the forward (connect) or host (shell)


@dataclass(frozen=True)
class Item:
    label: str
    action: Action | None = None
    enabled: bool = True
    checked: bool | None = None  # None: not a check item
    submenu: tuple[Entry, ...] | None = None


@dataclass(frozen=True)
class Separator:
    pass


Entry = Item | Separator
SEPARATOR = Separator()
KEEP_DURATION = "1h"  # what "Keep running" asks the daemon for
KEEP_LABEL = "Keep running 1 h"


# ---- the icon and the tooltip ------------------------------------------------------------------


def profile_state(p: ProfileStatus) -> IconState:
    """The icon one profile deserves: green or blue only while `ssh` is "connected"."""
    if p.starting or p.bastion.state == "pending" or p.bastion.ssh == "connecting":
        return IconState.STARTING
    if p.error is not None:
        return IconState.ERROR
    if p.running:
        if p.bastion.ssh != "connected":  # sessions of `ssh foo-bastion` flow without it
            return IconState.LINK_DOWN
        return IconState.CONNECTED if p.connections else IconState.READY
    return IconState.STOPPED


# the most urgent state of any profile wins the icon: one bastion without its link keeps
# the icon from going green or blue for another
_URGENCY = [IconState.ERROR, IconState.STARTING, IconState.LINK_DOWN, IconState.CONNECTED,
            IconState.READY, IconState.STOPPED]


def icon_state(status: Status | None, connected: bool = True) -> IconState:
    if not connected or status is None:
        return IconState.OFFLINE
    states = {profile_state(p) for p in status.profiles.values()}
    return next((s for s in _URGENCY if s in states), IconState.STOPPED)


def ticking(status: Status | None, warn_before: WarnBefore | None = None) -> bool:
    """Whether the lines count seconds now, so the tray redraws every second between the
    daemon's events: a bring-up's seconds, an idle warning's countdown to the second."""
    if status is None:
        return False
    warn = warn_before or {}
    return status.any_starting or any(
        p.stops_in_seconds is not None and name in warn and p.stops_in_seconds <= warn[name]
        for name, p in status.profiles.items())


def tooltip(status: Status | None, connected: bool = True, notice: str | None = None, *,
            warn_before: WarnBefore | None = None) -> str:
    """The icon's title: one status line per profile (and the last notice, if any)."""
    lines = ["bastion-tray"]
    if not connected or status is None:
        lines.append("daemon not running — reconnecting…")
    else:
        lines += [status_line(n, p, warn_before=(warn_before or {}).get(n))
                  for n, p in sorted(status.profiles.items())]
    if notice:
        lines.append(notice)
    return "\n".join(lines)


# ---- building the menu -------------------------------------------------------------------------


def profile_entries(name: str, p: ProfileStatus, *, usable: bool = True,
                    warn_before: float | None = None) -> list[Entry]:
    """One profile's items; `usable=False` (the status is stale) disables what needs the
    daemon's current state."""
    starting, running = p.starting, p.running
    connected = running and p.bastion.ssh == "connected"
    state = p.bastion.state
    entries: list[Entry] = [Item(status_line(name, p, warn_before=warn_before), enabled=False)]
    cost = cost_line(p)
    if cost is not None:
        entries.append(Item(cost, enabled=False))
    for fwd, info in p.forwards.items():
        entries.append(Item(f"Connect {fwd} ({info.local})", Action("connect", name, fwd),
                            enabled=usable and not starting, checked=info.listening))
    if p.hosts:
        entries.append(Item("Open shell", submenu=tuple(
            Item(host, Action("shell", name, host)) for host in p.hosts)))
    entries += [
        Item("Start bastion", Action("start", name),
             enabled=usable and not starting and not connected and state != "pending"),
        Item("Stop bastion now", Action("stop", name),
             enabled=usable and (starting or state in ("pending", "running"))),
        Item(KEEP_LABEL, Action("keep", name),
             enabled=usable and running and not starting and p.auto_stop),
        Item("Copy ssh config", Action("copy-ssh-config", name)),
        Item("Show ssh config", Action("show-ssh-config", name)),
    ]
    return entries


def cost_line(p: ProfileStatus) -> str | None:
    """"this month: 3.2 h · $0.07", from the `cost` the daemon adds to the status."""
    figures = p.extra.get("cost")
    if not isinstance(figures, Mapping):
        return None
    hours, usd = figures.get("running_hours"), figures.get("usd")
    if isinstance(hours, bool) or not isinstance(hours, int | float):
        return None
    return tray_line(float(hours), float(usd) if isinstance(usd, int | float)
                     and not isinstance(usd, bool) else None)


def quit_label(status: Status | None) -> str:
    """Says what quitting does: the daemon exits and stops the bastions it started."""
    profiles = status.profiles if status is not None else {}
    stopping = sorted(n for n, p in profiles.items()
                      if p.started_by_daemon and p.auto_stop
                      and p.bastion.state in ("pending", "running"))
    if len(stopping) == 1:
        return f"Quit (stops the bastion of {stopping[0]})"
    if stopping:
        return f"Quit (stops the bastions of {', '.join(stopping)})"
    listening = any(f.listening for p in profiles.values() for f in p.forwards.values())
    return "Quit (closes the forwards)" if listening else "Quit"


def build_menu(status: Status | None, *, connected: bool = True,
               notice: str | None = None,
               offline_text: str = "Daemon not running — reconnecting…",
               warn_before: WarnBefore | None = None) -> tuple[Entry, ...]:
    """The whole menu. One profile: its items inline; several: a submenu per profile, labelled
    with its status line. `notice` (the last notification, for backends without any) shows
    as a line of its own."""
    entries: list[Entry] = []
    if not connected:
        entries += [Item(offline_text, enabled=False), SEPARATOR]
    if notice:
        entries += [Item(notice, enabled=False), SEPARATOR]
    profiles = dict(sorted(status.profiles.items())) if status is not None else {}
    warn = warn_before or {}
    if len(profiles) == 1:
        [(name, p)] = profiles.items()
        entries += [*profile_entries(name, p, usable=connected, warn_before=warn.get(name)),
                    SEPARATOR]
    else:
        for name, p in profiles.items():
            children = profile_entries(name, p, usable=connected, warn_before=warn.get(name))
            entries.append(Item(status_line(name, p, warn_before=warn.get(name)),
                                submenu=tuple(children[1:])))
        if profiles:
            entries.append(SEPARATOR)
    entries += [
        Item("Open config file", Action("open-config")),
        Item("Show log", Action("show-log")),
        SEPARATOR,
        Item(quit_label(status if connected else None), Action("quit")),
    ]
    return tuple(entries)


def find(entries: tuple[Entry, ...] | list[Entry], label_prefix: str) -> Item:
    """The first item (depth first) whose label starts with `label_prefix`; KeyError if none."""
    for entry in entries:
        if isinstance(entry, Item):
            if entry.label.startswith(label_prefix):
                return entry
            if entry.submenu:
                try:
                    return find(entry.submenu, label_prefix)
                except KeyError:
                    pass
    raise KeyError(label_prefix)
