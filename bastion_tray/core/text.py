"""Text helpers for messages that echo what a user typed or wrote."""

from __future__ import annotations


def clip(text: str, limit: int = 80) -> str:
    """`text` as it is when at most `limit` characters, else its start, "…" and its length:
    an error that echoes a 10-MB argument must not print 10 MB."""
    if len(text) <= limit:
        return text
    return f"{text[:max(limit, 0)]}… ({len(text)} chars)"
