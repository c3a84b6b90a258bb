"""One event loop that pumps bytes between local sockets and SSH channels, for the whole daemon.

One thread waits on every pair (local socket, Channel) with one selector: threads per
connection lose to `ssh -L` under load, and `select()` stops near 1,024 descriptors.
The loop never waits on a peer. What one end cannot take waits in a per-direction buffer of at
most one read, and the other end is not read until it drained (so the SSH window closes and the
server stops sending). A non-blocking channel raises `socket.timeout` on send when its SSH
window is exhausted, and no descriptor becomes readable when it opens again: the relay hooks the
channel's window condition (paramiko notifies it on WINDOW_ADJUST and on close), polling as a
fallback. Half-closes travel both ways. What can still stall the loop: paramiko writing into a
full transport socket or waiting out a re-key, in the caller's thread (the transport is shared).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bastion_tray.core.errors import BastionTrayError

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20  # per read from either side: big reads keep the per-call Python cost low
WINDOW_POLL_SECONDS = 0.005  # longest sleep while a window it cannot be woken for is shut
MMAP_THRESHOLD = 4 << 20  # glibc: buffers up to this size come from the heap, not mmap() ...
TRIM_THRESHOLD = 16 << 20  # ... and this much free heap is kept, not handed back each time
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


def tune_allocator() -> bool:
    """Stop glibc from mmap/munmap-ing (or trimming) a channel's buffer on every fill and drain:
    past the default 128 KiB thresholds paramiko's buffer moves ~0.8 GB/s instead of ~18 (page
    faults), and downloads lose ~20%. Process-wide, idempotent; False where not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # musl has one that changes nothing: False
    except (OSError, AttributeError, TypeError):  # macOS has none, Windows no CDLL(None)
        return False
    # <malloc.h>: M_MMAP_THRESHOLD -3, M_TRIM_THRESHOLD -1
    return bool(mallopt(-3, MMAP_THRESHOLD)) and bool(mallopt(-1, TRIM_THRESHOLD))


def release_free_memory() -> None:
    """glibc's malloc_trim(0): hand free heap back to the OS (what tune_allocator keeps)."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).malloc_trim(0)


class RelayClosedError(BastionTrayError):
    """The relay was closed: it takes no new connections."""


@dataclass(frozen=True)
class RelayStats:
    """What one connection carried, reported once when it is closed."""

    bytes_up: int  # local → channel
    bytes_down: int  # channel → local
    seconds: float  # from add() to close
    reason: str  # "done" when both directions finished cleanly; else what ended it


class RelayHandle:
    """One relayed connection, as `Relay.add` returns it: live `bytes_up` / `bytes_down`,
    `close()`, `wait_closed()`. Every other field belongs to the relay thread."""

    def __init__(self, relay: Relay, sock: Any, channel: Any,
                 on_closed: Callable[[RelayStats], None]) -> None:
        self._relay = relay
        self.sock, self.channel, self.on_closed = sock, channel, on_closed
        self.started = time.monotonic()
        self.bytes_up = 0  # local → channel, so far
        self.bytes_down = 0  # channel → local, so far
        self.pending_up, self.up_offset = b"", 0  # read from the socket, not yet all sent
        self.pending_down = memoryview(b"")  # read from the channel, not yet taken by the socket
        self.local_eof = False  # the socket said EOF (pending_up may still hold data)
        self.up_done = False  # that EOF was passed on to the channel
        self.down_done = False  # the channel's EOF was passed on to the socket
        self.failed: str | None = None  # an error met before the loop took the pair
        self.closed, self.done = False, threading.Event()
        self.sock_fd, self.chan_fd = sock.fileno(), channel.fileno()
        # one packet per send: paramiko cuts a send to the peer's packet size anyway
        self.chunk = max(4096, int(getattr(channel, "out_max_packet_size", 32768)) - 64)

    def close(self) -> None:
        """Close both sides. Asynchronous: `on_closed` follows on the relay thread."""
        self._relay._poke(self, close=True)

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)


class _WindowWatch(threading.Condition):
    """A channel's window condition that also pokes the relay when paramiko notifies it."""

    def __init__(self, lock: Any, poke: Callable[[], None]) -> None:
        super().__init__(lock)
        self._poke = poke

    def notify_all(self) -> None:
        super().notify_all()
        self._poke()


class Relay:
    """The engine: `add()` pairs, `close()` it all. A context manager."""

    def __init__(self, *, name: str = "relay", tune_malloc: bool = True) -> None:
        if tune_malloc:
            tune_allocator()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, _READ, None)
        self._lock = threading.Lock()  # guards the three lists below and _stopping
        self._incoming: list[RelayHandle] = []
        self._to_close: list[RelayHandle] = []
        self._poked: set[RelayHandle] = set()  # their window opened, or their channel closed
        self._stopping = False
        self._pairs: set[RelayHandle] = set()  # the loop's own from here on
        self._interest: dict[int, int] = {}  # fd → registered events
        self._window_waiters: set[RelayHandle] = set()  # pairs with pending_up: window exhausted
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def add(self, sock: Any, channel: Any,
            on_closed: Callable[[RelayStats], None]) -> RelayHandle:
        """Relay `sock` (a socket or alike) ⇄ `channel` (a paramiko Channel, or anything with
        fileno/recv/send/shutdown_write/close whose recv won't block once fileno is readable)
        until both directions are done. The relay owns and closes both; `on_closed` runs once,
        on the relay thread: keep it short."""
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError, AttributeError):  # not TCP: no Nagle to turn off
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            channel.setblocking(0)
            pair = RelayHandle(self, sock, channel, on_closed)
        except BaseException:
            _close_quietly(sock, channel)
            raise
        self._prime(pair)
        # hooked after _prime: a poke meanwhile had the loop resend what _prime was sending
        lock = getattr(channel, "lock", None)
        if lock is not None and isinstance(getattr(channel, "out_buffer_cv", None),
                                           threading.Condition):
            channel.out_buffer_cv = _WindowWatch(lock, lambda: self._poke(pair))
        with self._lock:
            if self._stopping:
                _close_quietly(sock, channel)
                raise RelayClosedError("the relay is closed; it takes no new connections")
            self._incoming.append(pair)
        self._wake()
        return pair

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread after closing every connection (their `on_closed` runs first)."""
        with self._lock:
            self._stopping = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prime(self, pair: RelayHandle) -> None:
        """Move what is already there before the loop sees the pair (it is still ours alone):
        saves a thread hop on the first request or banner. If nothing went up, nudge the
        transport: a server like sshd holds its first data packet back (Nagle) until the
        channel confirmation is ACKed, and our kernel delays that ACK by ~40 ms otherwise."""
        try:
            self._read_local(pair)
            ready = getattr(pair.channel, "recv_ready", None)  # a stand-in may block in recv
            if ready is not None and ready() and not pair.pending_down:
                self._read_channel(pair)
            if pair.bytes_up == 0 and hasattr(pair.channel, "get_transport"):
                pair.channel.get_transport().send_ignore(1)
        except Exception as exc:
            pair.failed = f"{type(exc).__name__}: {exc}"

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake is pending anyway) or closed
            self._wake_w.send(b"x")

    def _poke(self, pair: RelayHandle, *, close: bool = False) -> None:
        with self._lock:
            (self._to_close.append if close else self._poked.add)(pair)
        self._wake()

    # ---- the relay thread ----

    def _run(self) -> None:
        try:
            while not self._take_requests():
                timeout = WINDOW_POLL_SECONDS if self._window_waiters else None
                for key, events in self._selector.select(timeout):
                    if key.data is None:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    elif not key.data[0].closed:
                        self._step(key.data[0], key.data[1], events)
                with self._lock:
                    poked, self._poked = self._poked, set()
                for pair in poked | self._window_waiters:
                    if pair in self._pairs:  # not one still on its way in (or gone)
                        self._step(pair, "poke", 0)
        except Exception:
            log.exception("relay loop crashed; closing every connection")
        finally:
            with self._lock:
                self._stopping = True
                leftovers, self._incoming = self._incoming, []
            for pair in [*self._pairs, *leftovers]:
                self._finish(pair, "relay closed")
            _close_quietly(self._selector, self._wake_r, self._wake_w)

    def _take_requests(self) -> bool:
        """Register new pairs, close requested ones; True when the relay is stopping."""
        with self._lock:
            incoming, self._incoming = self._incoming, []
            to_close, self._to_close = self._to_close, []
            stopping = self._stopping
        for pair in incoming:
            self._pairs.add(pair)
            self._step(pair, "poke", 0)  # registers it, or finishes it with pair.failed
        for pair in to_close:
            self._finish(pair, "closed on request")
        return stopping

    def _step(self, pair: RelayHandle, side: str, events: int) -> None:
        try:
            if pair.failed:
                raise ConnectionError(pair.failed)
            if side == "sock":
                if events & _WRITE:
                    self._flush_down(pair)
                if events & _READ:
                    self._read_local(pair)
            elif side == "chan":
                self._read_channel(pair)
            else:  # new, poked (window granted or channel closed), or waiting for window
                if pair.pending_up:
                    self._flush_up(pair)
                if pair.down_done and getattr(pair.channel, "closed", False):
                    pair.up_done = True  # nobody is left to send to
            if pair.up_done and pair.down_done:
                self._finish(pair, "done")
            else:
                self._update_interest(pair)
        except Exception as exc:  # OSError, EOFError, paramiko's SSHException: this pair only
            self._finish(pair, pair.failed or f"{type(exc).__name__}: {exc}")

    def _read_local(self, pair: RelayHandle) -> None:
        try:
            data = pair.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        pair.pending_up, pair.up_offset, pair.local_eof = data, 0, not data
        self._flush_up(pair)

    def _flush_up(self, pair: RelayHandle) -> None:
        data, offset, chunk = pair.pending_up, pair.up_offset, pair.chunk
        try:
            while offset < len(data):
                sent = pair.channel.send(data[offset:offset + chunk])
                if sent <= 0:
                    raise EOFError("the channel is closed")
                offset += sent
                pair.bytes_up += sent
        except TimeoutError:  # socket.timeout: the SSH window is exhausted; keep the rest
            pair.up_offset = offset
            return
        pair.pending_up, pair.up_offset = b"", 0
        if pair.local_eof and not pair.up_done:
            pair.up_done = True
            pair.channel.shutdown_write()

    def _read_channel(self, pair: RelayHandle) -> None:
        try:
            data = pair.channel.recv(READ_SIZE)
        except TimeoutError:  # nothing buffered after all
            return
        if data:
            pair.pending_down = memoryview(data)
            self._flush_down(pair)
            return
        pair.down_done = True
        if getattr(pair.channel, "closed", False):
            pair.up_done = True  # closed, not just EOF: nothing more can go up
        with contextlib.suppress(OSError):
            pair.sock.shutdown(socket.SHUT_WR)

    def _flush_down(self, pair: RelayHandle) -> None:
        view = pair.pending_down
        while view:
            try:
                sent = pair.sock.send(view)
            except (BlockingIOError, InterruptedError):
                break
            pair.bytes_down += sent
            view = view[sent:]
        pair.pending_down = view

    def _update_interest(self, pair: RelayHandle) -> None:
        sock_events = (_WRITE if pair.pending_down else 0) | (
            0 if pair.local_eof or pair.pending_up else _READ)
        chan_events = 0 if pair.down_done or pair.pending_down else _READ
        self._set_interest(pair.sock_fd, sock_events, (pair, "sock"))
        self._set_interest(pair.chan_fd, chan_events, (pair, "chan"))
        (self._window_waiters.add if pair.pending_up else self._window_waiters.discard)(pair)

    def _set_interest(self, fd: int, events: int, data: tuple[RelayHandle, str]) -> None:
        current = self._interest.get(fd, 0)
        if events == current:
            return
        if events:
            (self._selector.modify if current else self._selector.register)(fd, events, data)
            self._interest[fd] = events
        else:
            self._selector.unregister(fd)
            del self._interest[fd]

    def _finish(self, pair: RelayHandle, reason: str) -> None:
        if pair.closed:
            return
        pair.closed = True
        for fd in (pair.sock_fd, pair.chan_fd):
            if self._interest.pop(fd, 0):
                self._selector.unregister(fd)
        self._pairs.discard(pair)
        self._window_waiters.discard(pair)
        _close_quietly(pair.sock, pair.channel)
        try:
            pair.on_closed(RelayStats(pair.bytes_up, pair.bytes_down,
                                      time.monotonic() - pair.started, reason))
        except Exception:
            log.exception("on_closed callback failed")
        finally:
            pair.done.set()
        if not self._pairs:
            release_free_memory()  # idle now: the heap the buffers kept goes back to the OS


def _close_quietly(*things: Any) -> None:
    for thing in things:
        with contextlib.suppress(Exception):
            thing.close()
