"""One event loop that pumps bytes between local sockets and SSH channels, for the whole daemon.

Threads per connection (paramiko's demos) cost two threads per idle Workbench tab and lose to
`ssh -L` under load; here one thread waits on every pair (local socket, Channel) with one
selector (epoll/kqueue: `select()` caps out near 1,024 descriptors, ~340 connections).

The loop never waits on a peer. Both ends are non-blocking; what one end cannot take waits in a
per-direction buffer of at most one read, and the other end is not read again until it drained
(so the SSH window closes and the server stops sending: backpressure, never unbounded buffers).
A channel whose SSH window is exhausted raises `socket.timeout` on send; no descriptor becomes
readable when the window opens again, so the relay hooks the channel's window condition (paramiko
notifies it on WINDOW_ADJUST and on close) to wake its selector, with a short poll as fallback.

Half-closes travel: local EOF → `channel.shutdown_write()`; channel EOF → `shutdown(SHUT_WR)` on
the local socket. A pair closes when both directions are done, on any error, or on request.
The loop can still stall while paramiko writes a packet into a full transport socket (or waits
out a re-key): paramiko does that in the caller's thread, and every channel shares it anyway.
"""

from __future__ import annotations

import contextlib
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

#: how much one read takes from either side: big reads keep the per-call Python cost low
READ_SIZE = 1 << 20
#: the loop's longest sleep while a channel waits for window it cannot be woken for
WINDOW_POLL_SECONDS = 0.005
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class RelayClosedError(BastionTrayError):
    """The relay was closed: it takes no new connections."""


@dataclass(frozen=True)
class RelayStats:
    """What one connection carried, reported once when it is closed."""

    bytes_up: int  # local → channel
    bytes_down: int  # channel → local
    seconds: float  # from add() to close
    reason: str  # "done" when both directions finished cleanly; else what ended it


class _Pair:
    """One relayed connection. Once registered, only the relay thread touches its state."""

    def __init__(self, sock: Any, channel: Any,
                 on_closed: Callable[[RelayStats], None]) -> None:
        self.sock, self.channel, self.on_closed = sock, channel, on_closed
        self.started = time.monotonic()
        self.bytes_up = self.bytes_down = 0
        self.pending_up = b""  # read from the socket, not yet taken by the channel
        self.up_offset = 0
        self.pending_down = memoryview(b"")  # read from the channel, not yet taken by the socket
        self.local_eof = False  # the socket said EOF (pending_up may still hold data)
        self.up_done = False  # that EOF was passed on to the channel
        self.down_done = False  # the channel's EOF was passed on to the socket
        self.failed: str | None = None  # an error met before the loop took the pair
        self.closed = False
        self.done = threading.Event()
        self.sock_fd, self.chan_fd = sock.fileno(), channel.fileno()
        # one packet per send: paramiko cuts a send to the peer's packet size anyway
        self.chunk = max(4096, int(getattr(channel, "out_max_packet_size", 32768)) - 64)


class RelayHandle:
    """What `Relay.add` returns: live counters and a way to close this one connection."""

    def __init__(self, relay: Relay, pair: _Pair) -> None:
        self._relay, self._pair = relay, pair

    @property
    def bytes_up(self) -> int:
        return self._pair.bytes_up

    @property
    def bytes_down(self) -> int:
        return self._pair.bytes_down

    @property
    def closed(self) -> bool:
        return self._pair.done.is_set()

    def close(self) -> None:
        """Close both sides. Asynchronous: `on_closed` follows on the relay thread."""
        self._relay._request_close(self._pair)

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self._pair.done.wait(timeout)


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

    def __init__(self, *, name: str = "relay") -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self._selector.register(self._wake_r, _READ, None)
        self._lock = threading.Lock()  # guards the three lists below and _stopping
        self._incoming: list[_Pair] = []
        self._to_close: list[_Pair] = []
        self._poked: set[_Pair] = set()  # their window opened, or their channel closed
        self._stopping = False
        self._pairs: set[_Pair] = set()  # the loop's own from here on
        self._interest: dict[int, int] = {}  # fd → registered events
        self._window_waiters: set[_Pair] = set()  # pairs with pending_up: window exhausted
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def add(self, sock: Any, channel: Any,
            on_closed: Callable[[RelayStats], None]) -> RelayHandle:
        """Relay `sock` ⇄ `channel` until both directions are done; the relay owns both from
        here on and closes them. `on_closed` runs once, on the relay thread: keep it short.

        `sock`: a socket, or anything with fileno/recv/send/setblocking/shutdown/close.
        `channel`: a paramiko Channel, or anything with fileno/recv/send/shutdown_write/close
        whose recv does not block once its fileno is readable.
        """
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            channel.setblocking(0)
            pair = _Pair(sock, channel, on_closed)
        except BaseException:
            _close_quietly(sock, channel)
            raise
        lock = getattr(channel, "lock", None)
        if lock is not None and isinstance(getattr(channel, "out_buffer_cv", None),
                                           threading.Condition):
            channel.out_buffer_cv = _WindowWatch(lock, lambda: self._poke(pair))
        self._prime(pair)
        with self._lock:
            if self._stopping:
                _close_quietly(sock, channel)
                raise RelayClosedError("the relay is closed; it takes no new connections")
            self._incoming.append(pair)
        self._wake()
        return RelayHandle(self, pair)

    @property
    def connections(self) -> int:
        """How many pairs the loop holds (a snapshot)."""
        return len(self._pairs)

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

    # ---- any thread ----

    def _prime(self, pair: _Pair) -> None:
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

    def _poke(self, pair: _Pair) -> None:
        with self._lock:
            self._poked.add(pair)
        self._wake()

    def _request_close(self, pair: _Pair) -> None:
        with self._lock:
            self._to_close.append(pair)
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
                    if not pair.closed:
                        self._step(pair, "poke", 0)
        except Exception:
            log.exception("relay loop crashed; closing every connection")
        finally:
            with self._lock:
                self._stopping = True
                leftovers, self._incoming = self._incoming, []
            for pair in [*self._pairs, *leftovers]:
                self._finish(pair, "relay closed")
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _take_requests(self) -> bool:
        """Register new pairs, close requested ones; True when the relay is stopping."""
        with self._lock:
            incoming, self._incoming = self._incoming, []
            to_close, self._to_close = self._to_close, []
            stopping = self._stopping
        for pair in incoming:
            self._pairs.add(pair)
            if pair.failed:
                self._finish(pair, pair.failed)
            else:
                self._step(pair, "poke", 0)
        for pair in to_close:
            self._finish(pair, "closed on request")
        return stopping

    def _step(self, pair: _Pair, side: str, events: int) -> None:
        try:
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
            self._finish(pair, f"{type(exc).__name__}: {exc}")

    def _read_local(self, pair: _Pair) -> None:
        try:
            data = pair.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        if data:
            pair.pending_up, pair.up_offset = data, 0
        else:
            pair.local_eof = True
        self._flush_up(pair)

    def _flush_up(self, pair: _Pair) -> None:
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

    def _read_channel(self, pair: _Pair) -> None:
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

    def _flush_down(self, pair: _Pair) -> None:
        view = pair.pending_down
        while view:
            try:
                sent = pair.sock.send(view)
            except (BlockingIOError, InterruptedError):
                break
            pair.bytes_down += sent
            view = view[sent:]
        pair.pending_down = view

    def _update_interest(self, pair: _Pair) -> None:
        sock_events = _WRITE if pair.pending_down else 0
        if not pair.local_eof and not pair.pending_up:
            sock_events |= _READ
        chan_events = 0 if pair.down_done or pair.pending_down else _READ
        self._set_interest(pair.sock_fd, sock_events, (pair, "sock"))
        self._set_interest(pair.chan_fd, chan_events, (pair, "chan"))
        if pair.pending_up:
            self._window_waiters.add(pair)
        else:
            self._window_waiters.discard(pair)

    def _set_interest(self, fd: int, events: int, data: tuple[_Pair, str]) -> None:
        current = self._interest.get(fd, 0)
        if events == current:
            return
        if not events:
            self._selector.unregister(fd)
            del self._interest[fd]
            return
        if current:
            self._selector.modify(fd, events, data)
        else:
            self._selector.register(fd, events, data)
        self._interest[fd] = events

    def _finish(self, pair: _Pair, reason: str) -> None:
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


def _close_quietly(*things: Any) -> None:
    for thing in things:
        with contextlib.suppress(Exception):
            thing.close()
