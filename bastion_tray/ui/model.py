"""The tray menu as plain data, built by pure functions from the daemon's status snapshot.

Nothing here touches pystray, a display or the daemon: `build_menu(status, ...)` returns
`Item`s (label, enabled, checked, action) and the tray's adapter turns them into a native
menu. An `Action` is data too ("connect foo db"); the runner in actions.py carries it out.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Snapshot = Mapping[str, Any]  # one profile's entry of `status --json`


class IconState(enum.StrEnum):
    """What the one tray icon says at a glance; the values name the icon files."""

    STOPPED = "stopped"  # every bastion stopped (or nothing to show)
    STARTING = "starting"  # waiting for a bastion
    READY = "ready"  # a bastion runs and SSH is connected, nothing flows yet
    CONNECTED = "connected"  # connections are open through a bastion
    ERROR = "error"  # a profile failed: see its status line
    OFFLINE = "offline"  # the daemon is not answering; the tray reconnects


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


# ---- reading a snapshot ------------------------------------------------------------------------


def state_of(snap: Snapshot) -> str:
    return str((snap.get("bastion") or {}).get("state") or "unknown")


def ssh_of(snap: Snapshot) -> str:
    return str((snap.get("bastion") or {}).get("ssh") or "disconnected")


def is_starting(snap: Snapshot) -> bool:
    return snap.get("starting_for_seconds") is not None


def is_running(snap: Snapshot) -> bool:
    return state_of(snap) == "running"


def connections(snap: Snapshot) -> int:
    forwards = snap.get("forwards") or {}
    open_ = sum(int(f.get("active_connections") or 0) for f in forwards.values())
    return open_ + int(snap.get("sessions") or 0)


def short_reason(message: str, limit: int = 60) -> str:
    """The first line of an error message, cut at a word boundary to fit a menu."""
    line = message.strip().splitlines()[0] if message.strip() else "unknown error"
    if len(line) <= limit:
        return line
    cut = line[: limit - 1].rsplit(" ", 1)[0]
    return (cut if len(cut) > limit // 2 else line[: limit - 1]).rstrip(" ,;:") + "…"


def human_duration(seconds: float) -> str:
    """'45 s', '18 min', '1 h 5 min': a countdown rounds up, so '1 min' never means 0."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{math.ceil(seconds)} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def aged(status: Mapping[str, Any] | None, seconds: float) -> Mapping[str, Any] | None:
    """`status` as it would read `seconds` after the daemon sent it: the starting clock runs
    on and the idle countdown runs down, so the menu stays live between heartbeats."""
    if status is None or seconds <= 0:
        return status
    profiles = {}
    for name, snap in (status.get("profiles") or {}).items():
        snap = dict(snap)
        if snap.get("starting_for_seconds") is not None:
            snap["starting_for_seconds"] = float(snap["starting_for_seconds"]) + seconds
        if snap.get("stops_in_seconds") is not None:
            snap["stops_in_seconds"] = max(0.0, float(snap["stops_in_seconds"]) - seconds)
        profiles[name] = snap
    return {**status, "profiles": profiles}


def any_starting(status: Mapping[str, Any] | None) -> bool:
    return any(is_starting(s) for s in ((status or {}).get("profiles") or {}).values())


def status_line(name: str, snap: Snapshot) -> str:
    """'foo: running · 2 connections · stops in 18 min', 'foo: starting… 23 s · waiting for
    SSH', 'foo: error — <short reason>', 'foo: stopped'."""
    if is_starting(snap):
        line = f"{name}: starting… {math.floor(float(snap['starting_for_seconds']))} s"
        return line + (f" · {snap['phase']}" if snap.get("phase") else "")
    error = snap.get("error")
    if error:
        return f"{name}: error — {short_reason(str(error.get('message') or ''))}"
    state = state_of(snap)
    if state != "running":
        return f"{name}: {'state unknown' if state == 'unknown' else state}"
    parts = ["running"]
    ssh = ssh_of(snap)
    if ssh != "connected":
        parts.append("SSH connecting" if ssh == "connecting" else "not connected")
    count = connections(snap)
    if count:
        parts.append(f"{count} connection{'s' if count != 1 else ''}")
    if snap.get("stops_in_seconds") is not None:
        parts.append(f"stops in {human_duration(float(snap['stops_in_seconds']))}")
    elif not snap.get("auto_stop", True):
        parts.append("auto-stop off")
    return f"{name}: " + " · ".join(parts)


def profile_state(snap: Snapshot) -> IconState:
    if is_starting(snap) or state_of(snap) == "pending" or ssh_of(snap) == "connecting":
        return IconState.STARTING
    if snap.get("error"):
        return IconState.ERROR
    if is_running(snap):
        return IconState.CONNECTED if connections(snap) else IconState.READY
    return IconState.STOPPED


# the most urgent state of any profile wins the icon
_URGENCY = [IconState.ERROR, IconState.STARTING, IconState.CONNECTED, IconState.READY,
            IconState.STOPPED]


def icon_state(status: Mapping[str, Any] | None, connected: bool = True) -> IconState:
    if not connected or status is None:
        return IconState.OFFLINE
    states = {profile_state(snap) for snap in (status.get("profiles") or {}).values()}
    return next((s for s in _URGENCY if s in states), IconState.STOPPED)


def tooltip(status: Mapping[str, Any] | None, connected: bool = True,
            notice: str | None = None) -> str:
    """The icon's title: one status line per profile (and the last notice, if any)."""
    lines = ["bastion-tray"]
    if not connected or status is None:
        lines.append("daemon not running — reconnecting…")
    else:
        lines += [status_line(n, s) for n, s in sorted((status.get("profiles") or {}).items())]
    if notice:
        lines.append(notice)
    return "\n".join(lines)


# ---- building the menu -------------------------------------------------------------------------


def profile_entries(name: str, snap: Snapshot, *, usable: bool = True) -> list[Entry]:
    """One profile's items; `usable=False` (the status is stale) disables what needs the
    daemon's current state."""
    starting, running = is_starting(snap), is_running(snap)
    connected = running and ssh_of(snap) == "connected"
    state = state_of(snap)
    entries: list[Entry] = [Item(status_line(name, snap), enabled=False)]
    for fwd, info in (snap.get("forwards") or {}).items():
        entries.append(Item(f"Connect {fwd} ({info.get('local', '?')})",
                            Action("connect", name, fwd), enabled=usable and not starting,
                            checked=bool(info.get("listening"))))
    hosts = list(snap.get("hosts") or [])
    if hosts:
        entries.append(Item("Open shell", submenu=tuple(
            Item(host, Action("shell", name, host)) for host in hosts)))
    entries += [
        Item("Start bastion", Action("start", name),
             enabled=usable and not starting and not connected and state != "pending"),
        Item("Stop bastion now", Action("stop", name),
             enabled=usable and (starting or state in ("pending", "running"))),
        Item(KEEP_LABEL, Action("keep", name),
             enabled=usable and running and not starting and bool(snap.get("auto_stop", True))),
        Item("Copy ssh config", Action("copy-ssh-config", name)),
        Item("Show ssh config", Action("show-ssh-config", name)),
    ]
    return entries


def quit_label(status: Mapping[str, Any] | None) -> str:
    """Says what quitting does: the daemon exits and stops the bastions it started."""
    profiles = (status or {}).get("profiles") or {}
    stopping = sorted(n for n, s in profiles.items()
                      if s.get("started_by_daemon") and s.get("auto_stop", True)
                      and state_of(s) in ("pending", "running"))
    if len(stopping) == 1:
        return f"Quit (stops the bastion of {stopping[0]})"
    if stopping:
        return f"Quit (stops the bastions of {', '.join(stopping)})"
    listening = any(f.get("listening") for s in profiles.values()
                    for f in (s.get("forwards") or {}).values())
    return "Quit (closes the forwards)" if listening else "Quit"


def build_menu(status: Mapping[str, Any] | None, *, connected: bool = True,
               notice: str | None = None,
               offline_text: str = "Daemon not running — reconnecting…") -> tuple[Entry, ...]:
    """The whole menu. One profile: its items inline; several: a submenu per profile, labelled
    with its status line. `notice` (the last notification, for backends without any) shows
    as a line of its own."""
    entries: list[Entry] = []
    if not connected:
        entries += [Item(offline_text, enabled=False), SEPARATOR]
    if notice:
        entries += [Item(notice, enabled=False), SEPARATOR]
    profiles = dict(sorted(((status or {}).get("profiles") or {}).items()))
    if len(profiles) == 1:
        [(name, snap)] = profiles.items()
        entries += [*profile_entries(name, snap, usable=connected), SEPARATOR]
    else:
        for name, snap in profiles.items():
            children = profile_entries(name, snap, usable=connected)
            entries.append(Item(status_line(name, snap), submenu=tuple(children[1:])))
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
