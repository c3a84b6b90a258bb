"""The one status line that the CLI, the demo and the tray all show, from the typed status
(core/status.py): what a profile is doing, its countdown, who keeps it up — and `LiveLine`,
which keeps that line live on a terminal or writes it line per change on a pipe."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Protocol

from bastion_tray.core.status import ProfileStatus


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


def countdown(seconds: float) -> str:
    """'1 min 50 s': to the second, for the last minutes before an idle stop (human_duration
    would say '2 min' for all of them); an hour or more reads as human_duration's."""
    whole = math.ceil(max(0.0, seconds))
    minutes, rest = divmod(whole, 60)
    if minutes >= 60:
        return human_duration(seconds)
    if not minutes:
        return f"{rest} s"
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


def short_reason(message: str, limit: int = 60) -> str:
    """The first line of an error message, cut at a word boundary to fit a menu."""
    line = message.strip().splitlines()[0] if message.strip() else "unknown error"
    if len(line) <= limit:
        return line
    cut = line[: limit - 1].rsplit(" ", 1)[0]
    return (cut if len(cut) > limit // 2 else line[: limit - 1]).rstrip(" ,;:") + "…"


def status_line(name: str, profile: ProfileStatus, *, warn_before: float | None = None) -> str:
    """One line for a profile, the same in the CLI, the demo and the tray:

    'foo: starting… 23 s · waiting for SSH', 'foo: error — <short reason>', 'foo: stopped',
    'foo: running · 2 connections', 'foo: running · stops in 18 min' and, once the stop is
    `warn_before` seconds away or less (the profile's warn_before), to the second: 'foo:
    running · idle, stops in 1 min 50 s'; while teammates keep it up, 'foo: in use by
    bob@laptop-b · you are idle'; and requests that wait for it to come up: 'foo: starting…
    3 s · waiting for SSH · 2 waiting'.
    """
    p = profile
    waiting = f" · {p.waiting} waiting" if p.waiting else ""
    if p.starting_for_seconds is not None:
        line = f"{name}: starting… {math.floor(max(0.0, p.starting_for_seconds))} s"
        return line + (f" · {p.phase}" if p.phase else "") + waiting
    if p.error is not None:
        return f"{name}: error — {short_reason(p.error.message)}"
    state = p.bastion.state
    if state != "running":  # a request during a stop waits for it, then starts it again
        return f"{name}: {'state unknown' if state == 'unknown' else state}{waiting}"
    if p.waiting_for_others:
        who = (f"in use by {', '.join(p.in_use_by)}" if p.in_use_by else
               f"in use by {p.other_sessions} other SSH session"
               f"{'s' if p.other_sessions != 1 else ''}" if p.other_sessions else
               "maybe in use by others")
        return f"{name}: {who} · you are idle"
    parts = ["running"]
    if p.bastion.ssh != "connected":
        parts.append("SSH connecting" if p.bastion.ssh == "connecting" else "not connected")
    count = p.connections
    if count:
        parts.append(f"{count} connection{'s' if count != 1 else ''}")
    if p.waiting:
        parts.append(f"{p.waiting} waiting")
    if p.stops_in_seconds is not None:
        if warn_before is not None and p.stops_in_seconds <= warn_before:
            parts.append(f"idle, stops in {countdown(p.stops_in_seconds)}")
        else:
            parts.append(f"stops in {human_duration(p.stops_in_seconds)}")
    elif not p.auto_stop:
        parts.append("auto-stop off")
    return f"{name}: " + " · ".join(parts)


# ---- the line kept live on a stream ------------------------------------------------------------


class Stream(Protocol):
    def write(self, text: str, /) -> Any: ...

    def flush(self) -> Any: ...


def _gist(name: str, p: ProfileStatus, warn_before: float | None, warn_step: float) -> object:
    """What the line says, minus its running clocks: the starting seconds dropped, the
    countdown to the minute (to `warn_step` seconds once warned) and whether it is warned."""
    coarse, warned = replace(p, starting_for_seconds=None if p.starting_for_seconds is None
                             else 0.0), False
    left = p.stops_in_seconds
    if left is not None:
        warned = warn_before is not None and left <= warn_before
        step = warn_step if warned else 60.0
        coarse = replace(coarse, stops_in_seconds=math.ceil(max(0.0, left) / step) * step)
    return status_line(name, coarse, warn_before=math.inf if warned else None), warned


class LiveLine:
    """One profile's status line kept live on a stream (the demo without a display). On a
    terminal: one line, rewritten in place at every update. On a pipe or a file, where a
    rewrite is garbage: a new line whenever what it says changes — state, phase, SSH,
    connections, requests waiting, teammates, an error, the start of the idle warning — and
    the countdown once a minute, every `warn_step` seconds once warned; never a ticker of
    seconds, never silent about the warning."""

    def __init__(self, stream: Stream, *, tty: bool | None = None,
                 warn_step: float = 10.0) -> None:
        self.stream = stream
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty and isatty()) if tty is None else tty
        self.warn_step = warn_step
        self._last: object = None
        self._open = False  # a terminal line without its newline yet

    def update(self, name: str, profile: ProfileStatus, *,
               warn_before: float | None = None) -> bool:
        """Show `profile`'s line; True when something was written."""
        return self._show(status_line(name, profile, warn_before=warn_before),
                          _gist(name, profile, warn_before, self.warn_step))

    def say(self, line: str) -> bool:
        """Show a line of another kind ("foo: daemon not answering (…)"), same rules."""
        return self._show(line, line)

    def _show(self, line: str, gist: object) -> bool:
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self._open = True
        elif gist != self._last:
            self.stream.write(line + "\n")
        else:
            return False
        self._last = gist
        self.stream.flush()
        return True

    def end(self) -> None:
        """Finish a terminal's line, so what comes next starts on a line of its own."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
