"""Which daemon events become notifications, their words and icons, and the way every
notice reaches the user: in order, exact repeats dropped, none lost.

Pure: event in, Notice out; the `Outbox` takes the sinks (desktop notifications, pystray's
one-at-a-time balloon, the menu line) and a clock from the tray.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bastion_tray.core.statusline import human_duration
from bastion_tray.core.team import in_use_text
from bastion_tray.ui.model import IconState


@dataclass(frozen=True)
class Notice:
    title: str  # "<profile>: <what happened>"
    message: str
    icon: IconState | None = None  # the state of what it announces, shown with it (its own,
    # never the tray's); None only for news of no state ("ssh config copied"): the tray's

    @property
    def line(self) -> str:
        """One line for the menu or the tooltip, where the backend cannot notify."""
        first = self.message.splitlines()[0] if self.message else ""
        return f"{self.title}: {first}" if first else self.title


def error_text(message: str, hint: str | None) -> str:
    """The message and what to do about it (`bastion-tray trust foo`, `aws sso login …`)."""
    return f"{message}\n→ {hint}" if hint else message


def notice_for_event(event: Mapping[str, Any]) -> Notice | None:
    """The notification an event of the `subscribe` stream deserves, or None."""
    kind, profile = event.get("type"), str(event.get("profile") or "")
    if kind == "ready":
        took = event.get("seconds")
        took_text = f" in {float(took):.1f} s" if isinstance(took, int | float) else ""
        where = f" ({event['host']})" if event.get("host") else ""
        return Notice(f"{profile}: bastion ready", f"ready{took_text}{where}", IconState.READY)
    if kind == "warn":
        stops_in = float(event.get("stops_in") or 0)
        return Notice(f"{profile}: idle",
                      f"{profile} stops in {human_duration(stops_in)} — "
                      "choose Keep running to stay", IconState.STARTING)  # amber: look here
    if kind == "stopped":
        reason = str(event.get("reason") or "")
        return Notice(f"{profile}: bastion stopped",
                      f"{event.get('state') or 'stopped'}" + (f" ({reason})" if reason else ""),
                      IconState.STOPPED)
    if kind == "in_use":
        users = [str(u) for u in event.get("in_use_by") or []]
        sessions = event.get("other_sessions")
        who = in_use_text(users, sessions if isinstance(sessions, int) else 0)
        # the daemon has just closed its own link (it would count as a session for them)
        return Notice(f"{profile}: {who}", f"you are idle; {profile} stops once they are gone",
                      IconState.LINK_DOWN)
    if kind == "error":
        return Notice(f"{profile}: error", error_text(str(event.get("message") or ""),
                                                      event.get("hint")), IconState.ERROR)
    if kind == "disconnected":
        return Notice(f"{profile}: SSH link lost",
                      f"{event.get('reason') or 'connection closed'}; reconnecting when needed",
                      IconState.LINK_DOWN)  # the daemon answers; its link to the bastion not
    return None


def _profile_of(notice: Notice) -> str:
    return notice.title.split(": ", 1)[0] if ": " in notice.title else ""


class Deduper:
    """Drops an exact repeat: the same text for the same profile, shown moments ago. A failed
    action also makes the daemon publish an `error` event with the very same message and
    hint; the user should read it once. Anything that differs in a word is shown."""

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self.clock = window, clock
        self._seen: dict[tuple[str, str], float] = {}

    def fresh(self, notice: Notice) -> bool:
        now = self.clock()
        self._seen = {k: t for k, t in self._seen.items() if now - t < self.window}
        key = (_profile_of(notice), notice.message)
        if key in self._seen:
            return False
        self._seen[key] = now
        return True


# what a merged notice must not hide, most urgent first
_MERGED_ICON = [IconState.ERROR, IconState.OFFLINE, IconState.LINK_DOWN]


def merge(shown: Notice, new: Notice) -> Notice:
    """One notice that says both: titles joined (the profile once), messages one per line."""
    prefix = _profile_of(shown) + ": "
    more = new.title[len(prefix):] if new.title.startswith(prefix) else new.title
    icon = next((i for i in _MERGED_ICON if i in (shown.icon, new.icon)), new.icon or shown.icon)
    return Notice(f"{shown.title} · {more}", f"{shown.message}\n{new.message}", icon)


class Coalescer:
    """For a sink that shows one notification at a time (pystray replaces its last one, the
    menu has one line): a notice that arrives while the last is still fresh is merged into
    it, so "bastion ready in 3 s" and "db connected", which come together, are both read."""

    def __init__(self, window: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self.clock = window, clock
        self._last: tuple[Notice, float] | None = None

    def merged(self, notice: Notice) -> Notice:
        """What showing `notice` now must show (nothing is recorded yet)."""
        if self._last is not None and self.clock() - self._last[1] < self.window:
            return merge(self._last[0], notice)
        return notice

    def record(self, shown: Notice) -> None:
        self._last = (shown, self.clock())


class Sink(Protocol):
    """Somewhere a notice can be shown. `replaces`: it shows one at a time."""

    replaces: bool

    def show(self, notice: Notice) -> bool:
        """Show it; False when this sink cannot (the next one is tried)."""
        ...


class Outbox:
    """Every notice the tray shows goes through here, one at a time and in the order they
    arrive (from the action threads and the daemon's event stream): exact repeats are
    dropped, then the first sink that can show it does. A sink that shows one notification
    at a time gets notices merged (`Coalescer`), so a second notice never hides the first."""

    def __init__(self, sinks: Sequence[Sink], *, dedupe: Deduper | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 merge_window: float = 5.0) -> None:
        self.sinks = list(sinks)
        self.dedupe = dedupe or Deduper(clock=clock)
        self._coalescers = {id(s): Coalescer(merge_window, clock) for s in self.sinks}
        self._lock = threading.Lock()

    def post(self, notice: Notice) -> Notice | None:
        """Show `notice`; returns what was shown (merged, maybe), None for a repeat or when
        no sink could show it."""
        with self._lock:
            if not self.dedupe.fresh(notice):
                return None
            for sink in self.sinks:
                coalescer = self._coalescers[id(sink)]
                shown = coalescer.merged(notice) if sink.replaces else notice
                if sink.show(shown):
                    if sink.replaces:
                        coalescer.record(shown)
                    return shown
            return None

