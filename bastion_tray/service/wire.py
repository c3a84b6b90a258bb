"""The control socket's wire (contract, DESIGN.md "Processes"): JSON lines, read with limits —
a line's length and its nesting are bounded before json sees them, and numbers must be finite.
Both ends use it: the client (control_client.py) and the server (control.py)."""

from __future__ import annotations

import json
import math
import re
import socket
import time
from typing import Any

# A reply (the status of many profiles) may be large; anything longer is a broken peer.
MAX_LINE = 16 * 1024 * 1024
# Nesting past this is refused before json.loads sees it (whose recursion would raise
# RecursionError, which once killed a connection's thread); a status is ~6 levels deep.
MAX_DEPTH = 32

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, escapes included
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def encode_line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def decode_line(line: bytes, *, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """One JSON object, or ValueError saying what is wrong with the line.

    Strict where json.loads is lenient: UTF-8 only, no NaN / Infinity (nor 1e309, which would
    become one), at most `max_depth` levels of nesting.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    check_depth(text, max_depth)
    try:
        message = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:  # check_depth makes this unreachable; never let it kill a thread
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    if not isinstance(message, dict):
        raise ValueError(f"expected a JSON object, got {_json_type(message)}")
    return message


def check_depth(text: str, max_depth: int = MAX_DEPTH) -> None:
    """ValueError if the JSON `text` nests arrays/objects deeper than `max_depth`. Brackets
    inside strings do not count; linear in the text, and stops at the first level too deep."""
    if text.count("[") + text.count("{") <= max_depth:
        return  # the common case: too few brackets to be too deep
    depth = 0
    for bracket in _NOT_BRACKET.sub("", _STRING.sub('""', text)):
        if bracket in "[{":
            depth += 1
            if depth > max_depth:
                raise ValueError(f"nested deeper than {max_depth} levels")
        else:
            depth -= 1


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _json_type(value: object) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


class LineReader:
    """Reads lines from a socket and keeps whatever arrived past the last line it returned."""

    def __init__(self, sock: socket.socket, limit: int = MAX_LINE) -> None:
        self._sock = sock
        self._limit = limit
        self._buf = bytearray()

    def read_line(self, timeout: float | None = None) -> bytes | None:
        """The next line without its newline; None at end of stream (a partial line is lost).

        `timeout` bounds the whole line, not each recv: a peer that trickles a byte now and then
        still runs out of time. TimeoutError then; the socket is left with that timeout set.
        ValueError when the line grows past the limit.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        scanned = 0
        while True:
            end = self._buf.find(b"\n", scanned)
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                return line
            if len(self._buf) > self._limit:
                raise ValueError(f"line longer than {self._limit} bytes")
            scanned = len(self._buf)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no complete line within {timeout:g} s")
                self._sock.settimeout(left)
            chunk = self._sock.recv(65536)
            if not chunk:
                return None
            self._buf += chunk

    def leftover(self) -> bytes:
        """Bytes received past the last line (the start of a raw pipe); the buffer is emptied."""
        data = bytes(self._buf)
        self._buf.clear()
        return data
