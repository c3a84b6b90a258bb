"""Text helpers for messages that echo what a user typed or wrote.

One way to cut: every error that echoes user input (the command line, the config file, the
control socket) goes through `clip` or `clip_repr`, so a 10-MB value is never printed back and
a cut value always says how long it was.
"""

from __future__ import annotations

#: how much of a value an error message echoes: about a line.
ECHO_LIMIT = 80


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text` as it is when at most `limit` characters, else its start, "…" and its length:
    an error that echoes a 10-MB argument must not print 10 MB."""
    if len(text) <= limit:
        return text
    return f"{text[:max(limit, 0)]}… ({len(text)} chars)"


def clip_repr(value: object, limit: int = ECHO_LIMIT) -> str:
    """`repr(value)` cut like `clip`: for a value of any type (a config value, a JSON field).

    A long str or bytes is cut before repr (repr of 10 MB would copy all of it first) and says
    its length; anything else is cut after."""
    if isinstance(value, str | bytes) and len(value) > limit:
        unit = "chars" if isinstance(value, str) else "bytes"
        head = repr(value[:max(limit - 2, 0)])  # the quotes count too
        return f"{head[:limit]}… ({len(value)} {unit})"
    try:
        text = repr(value)
    except ValueError:  # an int past sys.get_int_max_str_digits() has no repr
        return "an integer too long to print"
    return text if len(text) <= limit else f"{text[:limit]}…"
