"""One request on the control socket, as the daemon's handler sees it: its op and arguments
(read with the wire's limits and the config's bounds), events on the way, one final ok or error,
and `detach()` for a pipe that carries raw bytes after its ok. The server is control.py."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from bastion_tray.core.durations import echo, parse_bounded_duration
from bastion_tray.core.errors import BastionTrayError, DaemonError, UsageError
from bastion_tray.service.wire import LineReader, encode_line

STREAM_OPS = frozenset({"subscribe"})  # ops whose events keep coming after the ok

T = TypeVar("T")
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               dict: "an object", list: "an array"}


class ClientGone(DaemonError):
    """The client closed its connection; `send_event` raises it so a stream can end."""


class Request:
    """One request on the control socket, as the handler sees it.

    The handler runs in the connection's thread and answers before it returns: events with
    `send_event`, then `reply_ok` or `reply_error` (or it raises a BastionTrayError, which the
    server sends for it). After an ok it may `detach()` the socket to carry raw bytes.
    """

    def __init__(self, conn: socket.socket, reader: LineReader, op: str, args: dict[str, Any],
                 server_closing: threading.Event,
                 on_detach: Callable[[socket.socket], None] | None = None) -> None:
        self.op, self.args = op, args
        self._conn, self._reader, self._server_closing = conn, reader, server_closing
        self._on_detach = on_detach
        self._send_lock = threading.Lock()
        self.answer: str | None = None  #: "ok" or "error" once the final line is sent
        self.detached = False

    def arg(self, name: str, kind: type[T], default: T | None = None, *,
            required: bool = False) -> T | None:
        """`args[name]` if it has type `kind` (an int is a float too, a bool is never an int);
        `default` when absent or null; a UsageError naming the op, the arg and the type else."""
        value = self.args.get(name)
        if value is None:
            if required:
                raise UsageError(f"request {self.op!r} needs {name!r} "
                                 f"({_TYPE_NAMES.get(kind, kind.__name__)})")
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise UsageError(f"request {self.op!r}: {name!r} must be "
                             f"{_TYPE_NAMES.get(kind, kind.__name__)}, got {echo(value)}")
        return value

    def duration(self, name: str, *, maximum: float, default: object,
                 what: str | None = None) -> float:
        """`args[name]` (else `default`) as seconds, 0 ≤ s ≤ `maximum`; a UsageError naming
        `what` (default: the op), the limit and the value else."""
        value = self.args.get(name, default)
        try:
            return parse_bounded_duration(value, maximum=maximum, what=what or self.op)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def send_event(self, event: dict[str, Any]) -> None:
        if self.answer is not None and self.op not in STREAM_OPS:
            raise RuntimeError(f"{self.op!r} already answered: its events must come first")
        self._send({"event": event})

    def reply_ok(self, payload: dict[str, Any] | None = None) -> None:
        self._finish("ok", {} if payload is None else payload)

    def reply_error(self, exc: BastionTrayError) -> None:
        self._finish("error", {"kind": exc.kind, "message": exc.message, "hint": exc.hint})

    def detach(self) -> tuple[socket.socket, bytes]:
        """Take over the raw socket after an ok, with the bytes the client sent past its request
        line. The caller closes the socket."""
        if self.answer != "ok" or self.detached:
            raise RuntimeError(f"{self.op!r}: detach() needs an ok reply, once")
        self.detached = True
        self._conn.settimeout(None)
        if self._on_detach is not None:
            self._on_detach(self._conn)
        return self._conn, self._reader.leftover()

    @property
    def closed(self) -> bool:
        """The client went away, or the daemon is closing (polls; never blocks)."""
        return self.wait_closed(0)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` for the client to go away; True if it has. Meant for streams:
        what a subscriber sends after its request is read and dropped."""
        if self._server_closing.is_set():
            return True
        try:
            while select.select([self._conn], [], [], timeout)[0]:
                if self.op not in STREAM_OPS:
                    return self._conn.recv(1, socket.MSG_PEEK) == b""
                if not self._conn.recv(4096):
                    return True
                timeout = 0
        except (OSError, ValueError):  # reset, or closed under us
            return True
        return self._server_closing.is_set()

    def _finish(self, kind: str, payload: dict[str, Any]) -> None:
        if self.answer is not None:
            raise RuntimeError(f"{self.op!r} answered twice ({self.answer}, then {kind})")
        self.answer = kind
        self._send({kind: payload})

    def _send(self, message: dict[str, Any]) -> None:
        data = encode_line(message)
        with self._send_lock:
            try:
                self._conn.sendall(data)
            except OSError as exc:
                raise ClientGone(f"the client of {self.op!r} went away: {exc}") from exc
