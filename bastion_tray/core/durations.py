"""Durations as users write them: "90s", "30m", "2h", "1h30m", "500ms", or an integer of seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_EXPECTED = 'expected a duration like "90s", "30m", "2h" or an integer of seconds'
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: object) -> float:
    """Seconds as a float; ValueError with the expected forms when `value` is not a duration."""
    if isinstance(value, bool):
        raise ValueError(f"{_EXPECTED}, got a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"expected a duration ≥ 0, got {value}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like \"90s\", \"30m\", \"2h\", got {value!r}")
    text = value.strip().lower().replace(" ", "")
    if text.isdigit():
        return float(text)
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{_EXPECTED}, got {value!r}")
    return total


def format_duration(seconds: float) -> str:
    """Short human form: 45 s, 3 min, 1 h 20 min."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = (seconds + 30) // 60 if seconds >= 600 else seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min" if rest else f"{hours} h"
