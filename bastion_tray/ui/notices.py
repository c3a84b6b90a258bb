"""Which daemon events become notifications, and their words. Pure: event in, Notice out."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bastion_tray.ui.model import human_duration


@dataclass(frozen=True)
class Notice:
    title: str
    message: str

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
        return Notice(f"{profile}: bastion ready", f"ready{took_text}{where}")
    if kind == "warn":
        stops_in = float(event.get("stops_in") or 0)
        return Notice(f"{profile}: idle",
                      f"{profile} stops in {human_duration(stops_in)} — "
                      "choose Keep running to stay")
    if kind == "stopped":
        reason = str(event.get("reason") or "")
        return Notice(f"{profile}: bastion stopped",
                      f"{event.get('state') or 'stopped'}" + (f" ({reason})" if reason else ""))
    if kind == "error":
        return Notice(f"{profile}: error", error_text(str(event.get("message") or ""),
                                                      event.get("hint")))
    if kind == "disconnected":
        return Notice(f"{profile}: SSH link lost",
                      f"{event.get('reason') or 'connection closed'}; reconnecting when needed")
    return None


class Deduper:
    """Drops a notice whose text was shown moments ago: an action that fails also makes the
    daemon publish an `error` event, and the user should read the reason once."""

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self.clock = window, clock
        self._seen: dict[str, float] = {}

    def fresh(self, notice: Notice) -> bool:
        now = self.clock()
        self._seen = {k: t for k, t in self._seen.items() if now - t < self.window}
        key = notice.message.split("\n→", 1)[0]
        if key in self._seen:
            return False
        self._seen[key] = now
        return True


class Coalescer:
    """Merges a notice into the one shown moments before. Backends show one notification at
    a time (pystray replaces its last), so "bastion ready in 3 s" and "db connected", which
    arrive together, would otherwise lose the first."""

    def __init__(self, window: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self.clock = window, clock
        self._last: tuple[Notice, float] | None = None

    def combine(self, notice: Notice) -> Notice:
        now = self.clock()
        if self._last is not None and now - self._last[1] < self.window:
            shown = self._last[0]
            prefix = shown.title.split(": ", 1)[0] + ": "
            more = notice.title[len(prefix):] if notice.title.startswith(prefix) else \
                notice.title
            notice = Notice(f"{shown.title} · {more}", f"{shown.message}\n{notice.message}")
        self._last = (notice, now)
        return notice
