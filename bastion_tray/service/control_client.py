"""The control socket's wire, its two transports, and the client.

Wire (contract, DESIGN.md "Processes"): JSON lines. A request is one line `{"op": ..., **args}`;
the daemon answers with zero or more `{"event": {...}}` lines, then exactly one final line,
`{"ok": {...}}` or `{"error": {"kind", "message", "hint"}}`. After the ok of `subscribe` the
daemon streams `{"event": ...}` lines until either side closes; after the ok of a pipe op
(`proxy`) the connection carries raw bytes in both directions — unless the request said
`"stdio": true` and the ok says `"stdio": "send"`: then the client passes its stdin and stdout
descriptors (SCM_RIGHTS, unix socket only), the daemon answers `{"handed": {...}}` or an error
line, and closes the connection when the stream the ssh master carries for them ends.

The wire itself (JSON lines and their limits) is service/wire.py.

The client opens one connection per call, so a handle is safe to share between threads and a
subscription never blocks a request. The server (control.py) reuses the wire and adds its half
of each transport.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from bastion_tray.core.errors import (
    BastionTrayError,
    DaemonError,
    UsageError,
    WaitTimeout,
    error_from_wire,
)
from bastion_tray.core.paths import AppPaths
from bastion_tray.service.wire import (
    MAX_DEPTH,
    MAX_LINE,
    LineReader,
    check_depth,
    decode_line,
    encode_line,
)

# How long a client waits for the error line a daemon may have sent before it closed on us
# (a connection past the daemon's limit is refused at once, maybe before our request is sent).
REFUSAL_WAIT = 1.0
EventCallback = Callable[[dict[str, Any]], None]

__all__ = ["MAX_DEPTH", "MAX_LINE", "LineReader", "check_depth", "decode_line", "encode_line"]

class NoDaemon(DaemonError):
    """Nothing listens on the control endpoint."""

    def __init__(self, endpoint: Path) -> None:
        super().__init__(f"no daemon is running (nothing answers at {endpoint})",
                         hint="start one with: bastion-tray daemon")


# --- transports: platform variants, chosen by name; the server adds its half in control.py ----


class UnixSocketTransport:
    """A Unix socket, mode 0600, in the 0700 runtime dir; peers of another uid are refused."""

    name: ClassVar[str] = "unix"

    @staticmethod
    def is_supported() -> bool:
        return hasattr(socket, "AF_UNIX") and hasattr(os, "getuid")

    def endpoint(self, paths: AppPaths) -> Path:
        """The file that says a daemon may be listening (removed when it stops)."""
        return paths.socket

    def connect(self, paths: AppPaths, timeout: float | None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(paths.socket))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise NoDaemon(paths.socket) from exc
        except OSError as exc:
            sock.close()
            raise DaemonError(f"cannot reach the daemon at {paths.socket}: {exc}") from exc
        return sock

    def remove_endpoint(self, paths: AppPaths) -> None:
        self.endpoint(paths).unlink(missing_ok=True)


class TcpTokenTransport:
    """Loopback TCP for Windows, which has no Unix sockets in Python.

    The daemon's port and a random token sit in a file only the user can read. The first line
    of a connection is `{"op": "hello", "token": ...}`; the daemon does not acknowledge it, so
    the request follows right behind, and a refusal arrives as the answer to that request.
    """

    name: ClassVar[str] = "tcp"

    @staticmethod
    def is_supported() -> bool:
        return True

    def endpoint(self, paths: AppPaths) -> Path:
        return paths.runtime_dir / "daemon.addr"

    def connect(self, paths: AppPaths, timeout: float | None) -> socket.socket:
        try:
            info = json.loads(self.endpoint(paths).read_text())
            port, token = int(info["port"]), str(info["token"])
        except FileNotFoundError as exc:
            raise NoDaemon(self.endpoint(paths)) from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DaemonError(f"unreadable daemon address file {self.endpoint(paths)}: {exc}"
                              ) from exc
        try:  # only ever loopback, whatever the file says
            sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        except ConnectionRefusedError as exc:
            raise NoDaemon(self.endpoint(paths)) from exc
        except OSError as exc:
            raise DaemonError(f"cannot reach the daemon at 127.0.0.1:{port}: {exc}") from exc
        sock.sendall(encode_line({"op": "hello", "token": token}))
        return sock

    def remove_endpoint(self, paths: AppPaths) -> None:
        self.endpoint(paths).unlink(missing_ok=True)


Transport = UnixSocketTransport | TcpTokenTransport
TRANSPORTS: dict[str, type[Transport]] = {"unix": UnixSocketTransport, "tcp": TcpTokenTransport}


def transport_name(name: str | None = None) -> str:
    """`name` checked, or the first strategy this platform supports (unix, then tcp)."""
    if name is None:
        return next(n for n, cls in TRANSPORTS.items() if cls.is_supported())
    cls = TRANSPORTS.get(name)
    if cls is None:
        raise UsageError(f"unknown control transport {name!r} (known: {', '.join(TRANSPORTS)})")
    if not cls.is_supported():
        raise DaemonError(f"the {name!r} control transport is not supported on {sys.platform}")
    return name


# --- the client -----------------------------------------------------------------------------


class Subscription:
    """A `subscribe` stream: `snapshot` is the ok payload, iterating yields each event dict.

    Iteration ends when the daemon closes the stream or `close()` is called (from any thread);
    an error line from the daemon is raised rebuilt.
    """

    def __init__(self, sock: socket.socket, reader: LineReader, snapshot: dict[str, Any],
                 on_close: Callable[[Subscription], None]) -> None:
        self.snapshot = snapshot
        self._sock, self._reader, self._on_close = sock, reader, on_close
        self._closed = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while not self._closed:
            try:
                line = self._reader.read_line()
            except OSError:
                line = None
            if line is None:
                return
            message = _parse_reply(line, "subscribe")
            if "error" in message:
                raise _error_from_reply(message, "subscribe")
            if isinstance(message.get("event"), dict):
                yield message["event"]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):  # shutdown, not just close: wakes a blocked recv
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._on_close(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ControlClient:
    """A handle on a running daemon. Each call opens its own connection."""

    def __init__(self, paths: AppPaths, transport: Transport, *, timeout: float,
                 info: dict[str, Any]) -> None:
        self.paths, self.transport, self.timeout = paths, transport, timeout
        self.info = info  #: the daemon's answer to ping: {"pid": N, "version": "..."}
        self._subscriptions: set[Subscription] = set()

    @classmethod
    def connect(cls, paths: AppPaths, *, timeout: float = 5.0,
                transport: str | None = None) -> ControlClient:
        """A client for the daemon that answers ping, or NoDaemon / DaemonError."""
        client = cls(paths, TRANSPORTS[transport_name(transport)](), timeout=timeout, info={})
        client.info = client.request("ping", timeout=timeout)
        return client

    @property
    def pid(self) -> int:
        return int(self.info.get("pid", 0))

    def request(self, op: str, *, on_event: EventCallback | None = None,
                timeout: float | None = None, **args: Any) -> dict[str, Any]:
        """Send one request; return its ok payload, or raise the daemon's error rebuilt.

        `on_event` gets each event that precedes the reply. `timeout` bounds the whole wait
        (None: as long as the daemon works on it; its own steps have timeouts).
        """
        sock, reader = self._open(op, args)
        with sock:
            return self._final_reply(op, sock, reader, on_event, timeout)

    def subscribe(self, **args: Any) -> Subscription:
        """Open a `subscribe` stream: `.snapshot` is its ok payload, iterate it for events."""
        sock, reader = self._open("subscribe", args)
        try:
            snapshot = self._final_reply("subscribe", sock, reader, None, self.timeout)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        sub = Subscription(sock, reader, snapshot, self._subscriptions.discard)
        self._subscriptions.add(sub)
        return sub

    def open_pipe(self, op: str, *, on_event: EventCallback | None = None,
                  timeout: float | None = None, **args: Any) -> tuple[socket.socket, bytes]:
        """Send a pipe request (`proxy`); after its ok, the raw socket and the bytes read past
        the ok line, which are the first bytes of the pipe. The caller closes the socket."""
        sock, reader = self._open(op, args)
        try:
            self._final_reply(op, sock, reader, on_event, timeout)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return sock, reader.leftover()

    def hold(self, op: str, *, on_event: EventCallback | None = None,
             timeout: float | None = None, **args: Any) -> tuple[socket.socket, dict[str, Any]]:
        """A request whose answer lasts as long as its connection (`lend-key`): the ok payload
        and the socket; closing the socket ends what the daemon holds for it."""
        sock, reader = self._open(op, args)
        try:
            ok = self._final_reply(op, sock, reader, on_event, timeout)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return sock, ok

    def open_proxy(self, *, stdio: tuple[int, int] | None, on_event: EventCallback | None = None,
                   **args: Any) -> tuple[socket.socket, bytes, bool]:
        """A `proxy` request. With `stdio` (stdin, stdout) and a daemon whose ssh master carries
        the bytes, the two descriptors are handed over: then (socket, b"", True) — the socket
        closes when the stream ends. Otherwise (raw socket, first bytes, False), as `open_pipe`."""
        can_pass = stdio is not None and hasattr(socket, "send_fds") and isinstance(
            self.transport, UnixSocketTransport)
        sock, reader = self._open("proxy", {**args, "stdio": can_pass})
        try:
            ok = self._final_reply("proxy", sock, reader, on_event, None)
            if ok.get("stdio") != "send" or stdio is None:
                sock.settimeout(None)
                return sock, reader.leftover(), False
            socket.send_fds(sock, [b"F"], list(stdio))
            line = reader.read_line()
            reply = _parse_reply(line, "proxy") if line is not None else {}
            if "handed" not in reply:
                raise (_error_from_reply(reply, "proxy") if reply else DaemonError(
                    "the daemon closed the proxy before the stream started"))
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return sock, b"", True

    def close(self) -> None:
        """Close every open subscription (their iterators end)."""
        for sub in list(self._subscriptions):
            sub.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, op: str, args: dict[str, Any]) -> tuple[socket.socket, LineReader]:
        sock = self.transport.connect(self.paths, self.timeout)
        try:
            sock.sendall(encode_line({"op": op, **args}))
        except OSError as exc:
            refusal = _refusal(sock, op)  # e.g. "too many control connections", sent at once
            sock.close()
            if refusal is not None:
                raise refusal from exc
            raise DaemonError(f"cannot send {op!r} to the daemon: {exc}") from exc
        except ValueError as exc:  # NaN or infinity among the args: never put on the wire
            sock.close()
            raise UsageError(f"cannot send {op!r}: {exc}") from None
        return sock, LineReader(sock)

    def _final_reply(self, op: str, sock: socket.socket, reader: LineReader,
                     on_event: EventCallback | None, timeout: float | None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is not None:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
            else:
                sock.settimeout(None)
            try:
                line = reader.read_line()
            except TimeoutError as exc:
                raise WaitTimeout(f"the daemon did not answer {op!r} within {timeout:g} s",
                                  hint=f"see the daemon's log: {self.paths.daemon_log}") from exc
            except (OSError, ValueError) as exc:
                raise DaemonError(f"lost the daemon while waiting for {op!r}: {exc}") from exc
            if line is None:
                raise DaemonError(f"the daemon closed the connection before answering {op!r}",
                                  hint=f"see the daemon's log: {self.paths.daemon_log}")
            reply = _parse_reply(line, op)
            if "event" in reply:
                if on_event is not None and isinstance(reply["event"], dict):
                    on_event(reply["event"])
                continue
            if "ok" in reply:
                ok = reply["ok"]
                return ok if isinstance(ok, dict) else {"value": ok}
            raise _error_from_reply(reply, op)


def _refusal(sock: socket.socket, op: str) -> BastionTrayError | None:
    """The error line a daemon sent before it closed a connection we could not write to."""
    with contextlib.suppress(OSError, ValueError):
        sock.settimeout(REFUSAL_WAIT)
        line = LineReader(sock).read_line()
        if line is not None:
            reply = decode_line(line)
            if "error" in reply:
                return _error_from_reply(reply, op)
    return None


def _parse_reply(line: bytes, op: str) -> dict[str, Any]:
    try:
        return decode_line(line)
    except ValueError as exc:
        raise DaemonError(f"the daemon answered {op!r} with nonsense: {exc}") from exc


def _error_from_reply(reply: dict[str, Any], op: str) -> BastionTrayError:
    error = reply.get("error")
    if not isinstance(error, dict):
        return DaemonError(f"the daemon answered {op!r} with neither ok nor error: {reply!r:.200}")
    hint = error.get("hint")
    return error_from_wire(str(error.get("kind", "error")), str(error.get("message", "")),
                           hint if isinstance(hint, str) else None)
