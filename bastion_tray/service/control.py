"""The control socket's server: the only door to the daemon.

A thread per connection reads request lines and hands each to the daemon's handler as a
`Request` (control_request.py); the handler answers with events and one final ok or error
(wire: wire.py).
`ping` is answered here, so a client can probe a daemon that is still starting. One daemon per
user: `start()` claims the instance (spawn.py: lock, pidfile, listening socket) and `close()`
gives it up.

Whatever a peer sends, the server answers with an error line and lives on: a line is at most
MAX_REQUEST_LINE bytes and MAX_DEPTH levels deep (the wire refuses NaN, Infinity and non-UTF-8),
a connection that does not complete a request line within `idle_timeout` is closed, and at most
`max_connections` connections are served at once (a detached pipe no longer counts).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable

from bastion_tray import __version__
from bastion_tray.core.durations import echo, format_duration
from bastion_tray.core.errors import BastionTrayError, DaemonError, UsageError
from bastion_tray.core.paths import AppPaths
from bastion_tray.service.control_client import (
    MAX_DEPTH,
    LineReader,
    decode_line,
    encode_line,
    transport_name,
)
from bastion_tray.service.control_request import STREAM_OPS, ClientGone, Request
from bastion_tray.service.spawn import DaemonInstance, Listener

__all__ = ["STREAM_OPS", "ClientGone", "ControlServer", "Request"]

log = logging.getLogger("bastion_tray.control")

MAX_REQUEST_LINE = 1024 * 1024
MAX_REQUEST_DEPTH = MAX_DEPTH  # 32 levels of arrays/objects in one request
CONTROL_IDLE_TIMEOUT = 30.0  # a request line must be complete this long after the wait began
MAX_CONTROL_CONNECTIONS = 64  # served at once, streams included; the next one is refused
CLOSE_GRACE = 2.0  # how long close() waits for connection threads to notice
SLOT_GRACE = 0.5  # at the connection limit, how long a new one may wait for a slot



Handler = Callable[[Request], None]


class ControlServer:
    """The daemon's end of the control socket: a handle, `start()` … `close()`.

    `ops`, when given, are the ops the handler serves; the server answers any other op with a
    usage error. `transport` picks a strategy by name ("unix", "tcp"); default: the platform's.
    `idle_timeout`: how long a connection may take to send a complete request line (each one,
    while no request runs; a stream or a pipe, once answered, is exempt). `max_connections`:
    how many connections are served at once; the next is answered with an error and closed.
    """

    def __init__(self, paths: AppPaths, handler: Handler, *, ops: Iterable[str] | None = None,
                 transport: str | None = None, version: str = __version__,
                 idle_timeout: float = CONTROL_IDLE_TIMEOUT,
                 max_connections: int = MAX_CONTROL_CONNECTIONS) -> None:
        self.paths, self.handler, self.version = paths, handler, version
        self.ops = None if ops is None else frozenset(ops)
        self.transport = transport_name(transport)
        self.idle_timeout, self.max_connections = idle_timeout, max_connections
        self._instance: DaemonInstance | None = None
        self._sock: socket.socket | None = None
        self._listener: Listener | None = None
        self._wake_r: socket.socket | None = None  # a byte here wakes the accept loop
        self._wake_w: socket.socket | None = None
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._detached: set[socket.socket] = set()  # in _conns, but pipes: not counted
        self._freed = threading.Condition(self._lock)  # notified when a counted one ends
        self._no_grace_until = 0.0
        self._accept_thread: threading.Thread | None = None

    @property
    def active_connections(self) -> int:
        """Connections that count against `max_connections` (not detached pipes)."""
        with self._lock:
            return self._served_count()

    @property
    def address(self) -> str:
        """Where clients connect: the socket path, or 127.0.0.1:PORT for tcp."""
        if self._sock is None:
            return ""
        name = self._sock.getsockname()
        return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)

    def start(self) -> ControlServer:
        """Claim the instance (DaemonError if a daemon runs), listen, serve in threads."""
        self._instance = DaemonInstance.claim(self.paths, self.transport)
        self._sock, self._listener = self._instance.sock, self._instance.listener
        self._sock.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="control-accept",
                                               daemon=True)
        self._accept_thread.start()
        log.info("control socket listening at %s (%s)", self.address, self.transport)
        return self

    def close(self) -> None:
        """Stop listening, remove the socket and the pidfile, end the open connections.

        Detached sockets belong to their handlers and stay open."""
        if self._closing.is_set():
            return
        self._closing.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(CLOSE_GRACE)
        if self._instance is not None:  # closes the socket, removes it and the pidfile
            self._instance.release()
        with self._lock:
            conns = dict(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in conns.values():
            thread.join(CLOSE_GRACE / max(len(conns), 1))
        for wake in (self._wake_r, self._wake_w):
            if wake is not None:
                wake.close()

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        assert self._sock is not None and self._wake_r is not None
        while not self._closing.is_set():
            select.select([self._sock, self._wake_r], [], [])
            if self._closing.is_set():
                return
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as exc:  # EMFILE and the like: wait for descriptors to free up
                log.warning("accepting on the control socket failed: %s", exc)
                self._closing.wait(0.5)
                continue
            if not self._slot_free():
                self._refuse(conn)
                continue
            conn.setblocking(True)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                      name=f"control-{conn.fileno()}")
            with self._lock:
                self._conns[conn] = thread
            thread.start()

    def _served_count(self) -> int:
        return len(self._conns) - len(self._detached)  # callers hold self._lock

    def _slot_free(self) -> bool:
        """Whether a new connection may be served. At the limit, wait up to SLOT_GRACE for one
        to end: a client's calls come on connections of their own (ping, then the request),
        and the thread of the one it just closed may not have seen the EOF yet. In a burst of
        refusals, refuse at once: the accept loop must not fall behind."""
        with self._freed:
            if self._served_count() < self.max_connections:
                return True
            if time.monotonic() < self._no_grace_until:
                return False
            deadline = time.monotonic() + SLOT_GRACE
            while self._served_count() >= self.max_connections:
                left = deadline - time.monotonic()
                if left <= 0 or self._closing.is_set():
                    self._no_grace_until = time.monotonic() + SLOT_GRACE
                    return False
                self._freed.wait(left)
            return True

    def _slot_freed(self) -> None:  # callers hold self._lock
        self._no_grace_until = 0.0  # the burst is over: the next one at the limit may wait
        self._freed.notify_all()

    def _refuse(self, conn: socket.socket) -> None:
        """Answer a connection past the limit and close it, here in the accept loop: a thread
        per refusal would be what the limit is there to prevent. Nothing here may block."""
        message = f"too many control connections (limit {self.max_connections})"
        log.warning("control: %s; refusing one", message)
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.sendall(encode_line({"error": {
                "kind": DaemonError.kind, "message": message,
                "hint": "close a tray, a subscription or a stuck client, then try again"}}))
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):  # what already arrived: unread input would reset the line
                pass
        conn.close()

    def _detach(self, conn: socket.socket) -> None:
        with self._freed:
            if conn in self._conns:
                self._detached.add(conn)
                self._slot_freed()

    def _serve(self, conn: socket.socket) -> None:
        assert self._listener is not None
        reader = LineReader(conn, MAX_REQUEST_LINE)
        detached = False
        try:
            refusal = self._listener.authenticate(conn, reader)
            if refusal is not None:
                log.warning("control: %s", refusal)
                conn.sendall(encode_line({"error": {"kind": DaemonError.kind,
                                                    "message": refusal, "hint": None}}))
                _drain_and_close(conn)
                return
            while not self._closing.is_set():
                try:
                    line = reader.read_line(timeout=self.idle_timeout)
                except TimeoutError:
                    log.info("control: closing a connection silent for %s",
                             format_duration(self.idle_timeout))
                    conn.sendall(encode_line({"error": {
                        "kind": DaemonError.kind, "hint": None,
                        "message": f"closed: no complete request within {self.idle_timeout:g} s "
                                   "(control connections time out when idle)"}}))
                    _drain_and_close(conn)
                    return
                except ValueError as exc:  # too long: the rest of the stream is unreadable
                    self._send_usage(conn, f"malformed request: {exc}")
                    _drain_and_close(conn)
                    return
                if line is None:
                    return
                if not line.strip():
                    continue
                req = self._parse(conn, reader, line)
                if req is None:
                    continue
                conn.settimeout(None)  # the request's own steps have their timeouts
                self._dispatch(req)
                if req.detached:
                    detached = True
                    return
                if req.op in STREAM_OPS:
                    return
        except OSError as exc:
            log.debug("control connection ended: %s", exc)
        except Exception:  # a bug here must cost one connection, never the server
            log.exception("control: internal error serving a connection")
            with contextlib.suppress(OSError):
                conn.sendall(encode_line({"error": {"kind": DaemonError.kind, "hint": None,
                                                    "message": "internal error in the daemon"}}))
        finally:
            with self._freed:
                self._conns.pop(conn, None)
                self._detached.discard(conn)
                self._slot_freed()
            if not detached:
                conn.close()

    def _parse(self, conn: socket.socket, reader: LineReader, line: bytes) -> Request | None:
        try:
            message = decode_line(line, max_depth=MAX_REQUEST_DEPTH)
        except ValueError as exc:
            self._send_usage(conn, f"malformed request (one JSON object per line): {exc}")
            return None
        if "op" not in message:
            self._send_usage(conn, "malformed request: no \"op\"")
            return None
        op = message.pop("op")
        if not isinstance(op, str) or not op:
            self._send_usage(conn, f"malformed request: \"op\" must be a non-empty string, "
                             f"got {echo(op)}")
            return None
        if op != "ping" and self.ops is not None and op not in self.ops:
            known = ", ".join(sorted(self.ops | {"ping"}))
            self._send_usage(conn, f"unknown request {echo(op)} (known: {known})")
            return None
        return Request(conn, reader, op, message, self._closing, on_detach=self._detach)

    def _dispatch(self, req: Request) -> None:
        context = f"[op={req.op}]"
        try:
            if req.op == "ping":
                req.reply_ok({"pid": os.getpid(), "version": self.version})
            else:
                self.handler(req)
        except ClientGone as exc:
            log.debug("%s %s", context, exc)
            return
        except BastionTrayError as exc:
            if req.answer is None:
                self._try_reply_error(req, exc)
            else:
                log.warning("%s failed after its reply: %s", context, exc)
            return
        except Exception as exc:
            log.exception("%s internal error in the handler", context)
            if req.answer is None:
                self._try_reply_error(req, DaemonError(
                    f"internal error: {type(exc).__name__}: {exc}",
                    hint=f"the daemon's log has the traceback: {self.paths.daemon_log}"))
            return
        if req.answer is None:
            log.error("%s the handler returned without an answer", context)
            self._try_reply_error(req, DaemonError(f"internal error: no answer to {req.op!r}"))

    @staticmethod
    def _try_reply_error(req: Request, exc: BastionTrayError) -> None:
        with contextlib.suppress(ClientGone):
            req.reply_error(exc)

    @staticmethod
    def _send_usage(conn: socket.socket, message: str) -> None:
        conn.sendall(encode_line({"error": {"kind": UsageError.kind, "message": message,
                                            "hint": None}}))


def _drain_and_close(conn: socket.socket, linger: float = 1.0) -> None:
    """Close after a last answer so the client can read it: closing with unread input makes
    the kernel reset the connection, and the client would see ECONNRESET, not our answer."""
    deadline = time.monotonic() + linger
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            conn.settimeout(left)
            if not conn.recv(65536):
                return
