"""Handed-off streams until they end: one watch thread for the daemon, the kernel's byte counts
of a TCP socket the ssh master carries, and the handle a forward counts them by — the shape of
the relay's handle (adapters/relay.py), so forwards count both data planes the same way."""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

from bastion_tray.adapters.mux import HELLO, S_SESSION_OPENED, MuxStream, refusal
from bastion_tray.adapters.relay import RelayStats

log = logging.getLogger(__name__)


# -- byte counts of a handed-off TCP socket -------------------------------------------------

_LINUX_TCP_INFO, _LINUX_ACKED, _LINUX_RECEIVED = 11, 120, 128
_MAC_TCP_CONNECTION_INFO, _MAC_TX, _MAC_RX = 0x106, 64, 88


def tcp_bytes(sock: socket.socket) -> tuple[int, int] | None:
    """(bytes received from the peer, bytes sent and acked by it) of a TCP socket, from the
    kernel: TCP_INFO (Linux) or TCP_CONNECTION_INFO (macOS). None where the kernel won't say."""
    try:
        if sys.platform.startswith("linux"):
            raw = sock.getsockopt(socket.IPPROTO_TCP, _LINUX_TCP_INFO, 256)
            if len(raw) >= _LINUX_RECEIVED + 8:
                acked, received = struct.unpack_from("=QQ", raw, _LINUX_ACKED)
                return int(received), int(acked)
        elif sys.platform == "darwin":
            raw = sock.getsockopt(socket.IPPROTO_TCP, _MAC_TCP_CONNECTION_INFO, 256)
            if len(raw) >= _MAC_RX + 8:
                (sent,) = struct.unpack_from("=Q", raw, _MAC_TX)
                (received,) = struct.unpack_from("=Q", raw, _MAC_RX)
                return int(received), int(sent)
    except OSError:
        return None
    return None


class MuxHandle:
    """A stream handed to the master, as `MuxWatch.add` returns it: live `bytes_up` /
    `bytes_down` (from the kernel, for a TCP socket), `close()`, `wait_closed()` — the shape of
    the relay's handle, so a forward counts both the same way."""

    def __init__(self, watch: MuxWatch, stream: MuxStream, sock: socket.socket | None,
                 peer: socket.socket | None, on_closed: Callable[[RelayStats], None]) -> None:
        self._watch, self.stream, self.sock, self.peer = watch, stream, sock, peer
        self.on_closed = on_closed
        self.started = time.monotonic()
        self.final: tuple[int, int] | None = None
        self.done = threading.Event()

    def _counts(self) -> tuple[int, int]:
        if self.final is not None:
            return self.final
        counted = tcp_bytes(self.sock) if self.sock is not None else None
        return counted or (0, 0)

    @property
    def bytes_up(self) -> int:
        return self._counts()[0]

    @property
    def bytes_down(self) -> int:
        return self._counts()[1]

    def close(self) -> None:
        """End the stream now. Asynchronous: `on_closed` follows on the watch thread."""
        self._watch.poke(self)

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)


class Handed:
    """A stream the master carries for a forward's connection, not yet watched: `adopt()` gives
    the socket to the watch (a forward's connector returns this instead of a channel)."""

    def __init__(self, watch: MuxWatch, stream: MuxStream) -> None:
        self._watch, self._stream = watch, stream

    def adopt(self, sock: socket.socket, on_closed: Callable[[RelayStats], None]) -> MuxHandle:
        return self._watch.add(self._stream, sock, on_closed)

    def close(self) -> None:
        self._stream.close()


class MuxWatch:
    """One thread for the daemon that waits for handed-off streams to end: when the master
    closes a stream's mux connection (or the `peer` socket — a `proxy` client — goes away), it
    reads the final counts, closes our copy of the socket and reports the stream closed."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._incoming: list[MuxHandle] = []
        self._to_close: list[MuxHandle] = []
        self._open: set[MuxHandle] = set()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="mux-watch", daemon=True)
        self._thread.start()

    def add(self, stream: MuxStream, sock: socket.socket | None,
            on_closed: Callable[[RelayStats], None],
            peer: socket.socket | None = None) -> MuxHandle:
        """Watch `stream`; `sock` (counted, closed at the end) and `peer` are ours to close."""
        handle = MuxHandle(self, stream, sock, peer, on_closed)
        with self._lock:
            stopping = self._stopping
            if not stopping:
                self._incoming.append(handle)
        if stopping:
            self._finish(handle, "the daemon is closing")
        else:
            self._wake()
        return handle

    def poke(self, handle: MuxHandle) -> None:
        with self._lock:
            self._to_close.append(handle)
        self._wake()

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stopping = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    incoming, self._incoming = self._incoming, []
                    to_close, self._to_close = self._to_close, []
                    stopping = self._stopping
                for handle in incoming:
                    self._open.add(handle)
                    self._selector.register(handle.stream.control, selectors.EVENT_READ, handle)
                    if handle.peer is not None:
                        self._selector.register(handle.peer, selectors.EVENT_READ, handle)
                for handle in to_close:
                    self._finish(handle, "closed on request")
                if stopping:
                    break
                for key, _ in self._selector.select():
                    handle = key.data
                    if handle is None:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    elif handle in self._open:
                        ended = (_answers(handle.stream) if key.fileobj is handle.stream.control
                                 and not handle.stream.opened else None)
                        if ended is None and _ended(key.fileobj):  # type: ignore[arg-type]
                            ended = "done"
                        if ended:
                            self._finish(handle, ended)
        except Exception:
            log.exception("the mux watch crashed; closing every handed-off connection")
        finally:
            with self._lock:
                self._stopping = True
                leftovers, self._incoming = self._incoming, []
            for handle in [*self._open, *leftovers]:
                self._finish(handle, "the daemon is closing")
            for thing in (self._selector, self._wake_r, self._wake_w):
                with contextlib.suppress(Exception):
                    thing.close()

    def _finish(self, handle: MuxHandle, reason: str) -> None:
        if handle.done.is_set() or handle.final is not None:
            return
        handle.final = handle._counts()
        self._open.discard(handle)
        for thing in (handle.stream.control, handle.peer):
            if thing is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(thing)
        handle.stream.close()
        for sock in (handle.sock, handle.peer):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # the master may still hold a copy
                with contextlib.suppress(OSError):
                    sock.close()
        up, down = handle.final
        try:
            handle.on_closed(RelayStats(up, down, time.monotonic() - handle.started, reason))
        except Exception:
            log.exception("on_closed callback failed")
        finally:
            handle.done.set()


def _answers(stream: MuxStream) -> str | None:
    """Read the master's hello and answer to a stream begun without waiting; None while it is
    (or once it is) open, else why it ended — a refusal is logged as a warning here."""
    try:
        data = stream.control.recv(4096, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError as exc:
        data, failure = b"", f"the ssh master dropped the stream: {exc}"
    else:
        failure = "the ssh master closed the stream before it opened"
    if not data:
        log.warning("connection to %s closed: %s", stream.description, failure)
        return failure
    stream.pending += data
    while len(stream.pending) >= 8 and not stream.opened:
        (length,) = struct.unpack(">I", stream.pending[:4])
        if len(stream.pending) < 4 + length:
            return None
        payload, stream.pending = stream.pending[4:4 + length], stream.pending[4 + length:]
        kind = struct.unpack(">I", payload[:4])[0] if length >= 4 else 0
        if kind == S_SESSION_OPENED:
            stream.opened = True
        elif kind != HELLO:
            error = refusal(stream.description, kind, payload[4:])
            log.warning("connection to %s closed: %s", stream.description, error.message)
            return error.message
    return None


def _ended(sock: socket.socket) -> bool:
    """The stream's mux connection (or the proxy client) said EOF or failed; a stray byte from
    either is read and ignored."""
    try:
        return sock.recv(4096, socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
