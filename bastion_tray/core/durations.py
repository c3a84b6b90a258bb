"""Durations as users write them: "90s", "30m", "2h", "1h30m", "500ms", or an integer of seconds.

Every duration that enters the app (the config, the CLI, the control socket) is checked here:
finite, not negative, and no longer than a limit the caller names. A duration that slipped
through unbounded (1e309, NaN, "99999999999999999999h") used to overflow every later sum with
the clock and stop the idle stop for good.
"""

from __future__ import annotations

import math
import re

from bastion_tray.core.text import clip_repr

DAY = 86400.0
#: `keep PROFILE DURATION`: at most a week without an idle stop.
KEEP_LIMIT = 7 * DAY
#: the longest idle_timeout / warn_before a config file may set.
MAX_CONFIG_DURATION = 7 * DAY
#: the longest wait a config file may set for one connection (ready_timeout, lazy_wait,
#: keepalive_interval): past an hour, a wait is a hang.
MAX_CONFIG_WAIT = 3600.0
#: what parse_duration accepts when its caller names no limit: nothing the app times is longer.
DURATION_CEILING = 366 * DAY
#: a duration written out is a few characters; a longer text is refused before it is parsed.
MAX_DURATION_TEXT = 64
#: how much of a refused value an error message echoes.
ECHO_CHARS = 60

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY}
_FORMS = '"90s", "30m", "2h" or an integer of seconds'
# ASCII digits only: "²".isdigit() is True and float("٣") parses
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", re.ASCII)
_DIGITS = re.compile(r"\d+", re.ASCII)
_FOREVER = 100 * 365 * DAY  # format_duration's "over 100 years": no clock runs that long


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """`repr(value)` cut to about `limit` characters (text.clip_repr, the one way to cut)."""
    return clip_repr(value, limit)


def parse_duration(value: object, *, maximum: float = DURATION_CEILING) -> float:
    """Seconds as a float, 0 ≤ seconds ≤ `maximum`.

    ValueError, naming the limit and echoing (a bounded part of) the value, when `value` is not
    a duration: not a number or a duration text, a boolean, negative, NaN or infinite, too long
    a text, or more than `maximum`.
    """
    limit = format_duration(maximum)
    expected = f"expected a duration like {_FORMS}, at most {limit}"
    if isinstance(value, bool):
        raise ValueError(f"{expected}; got a boolean")
    if isinstance(value, int):  # a JSON integer can have 4000 digits: compare before float()
        if value < 0:
            raise ValueError(f"expected a duration ≥ 0, at most {limit}; got {echo(value)}")
        if value > maximum:
            raise ValueError(_too_long(limit, value))
        return float(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite duration, at most {limit}; got {value}")
        if value < 0:
            raise ValueError(f"expected a duration ≥ 0, at most {limit}; got {value:g}")
        if value > maximum:
            raise ValueError(_too_long(limit, value))
        return value
    if not isinstance(value, str):
        raise ValueError(f"{expected}; got {echo(value)}")
    if len(value) > MAX_DURATION_TEXT:  # refused before parsing; echo says how long it was
        raise ValueError(f"{expected}; got {echo(value)}")
    seconds = _parse_text(value.strip().lower().replace(" ", ""))
    if seconds is None:
        raise ValueError(f"{expected}; got {echo(value)}")
    if not math.isfinite(seconds) or seconds > maximum:
        raise ValueError(_too_long(limit, value))
    return seconds


def parse_bounded_duration(value: object, *, maximum: float, what: str) -> float:
    """parse_duration with a limit, for one named input: ValueError("keep: at most 7 d, got …").

    The message names `what`, the limit (format_duration) and the value, cut to ~60 characters.
    """
    try:
        return parse_duration(value, maximum=maximum)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _parse_text(text: str) -> float | None:
    """The seconds a duration text says, or None when it is not one (may be inf: see caller)."""
    if not text:
        return None
    if _DIGITS.fullmatch(text):
        return float(text)
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) else None


def _too_long(limit: str, value: object) -> str:
    return f"at most {limit}, got {echo(value)}"


def format_duration(seconds: float, *, round_up: bool = False) -> str:
    """Short human form: 45 s, 3 min, 1 h 20 min, 2 d 3 h — the one humanizer of the CLI's
    durations. Never raises: NaN is "unknown", anything past a century (inf included) "over 100
    years", anything negative "0 s".

    `round_up` for a countdown ("stops in …"): the unit shown is rounded up, so "1 min" never
    means 10 s and a fresh `keep 5m` reads "5 min", not "4 min", however long the reply took."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return "unknown"
    if isinstance(seconds, float) and math.isnan(seconds):  # isnan(10**400) would overflow
        return "unknown"
    if seconds >= _FOREVER:
        return "over 100 years"
    if seconds <= 0:  # -inf included: round() of it would raise
        return "0 s"
    if round_up:
        return _format_rounded_up(seconds)
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes = (whole + 30) // 60 if whole >= 600 else whole // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    days, hours = divmod(hours + (1 if rest >= 30 else 0), 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _format_rounded_up(seconds: float) -> str:
    whole = math.ceil(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes = math.ceil(whole / 60)
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 24 * 60:
        hours, rest = divmod(minutes, 60)
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    days, hours = divmod(math.ceil(minutes / 60), 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
