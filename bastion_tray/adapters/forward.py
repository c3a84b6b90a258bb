"""One `-L` forward: a local listener whose connections are relayed through the bastion.

It owns the accept thread and the per-connection accounting; the daemon-wide `Relay` pumps the
bytes. Each connection goes to a short-lived worker thread that asks the connector for a
channel: the connector may block for minutes, starting a stopped bastion (the "lazy" forward).
A worker lingers for the next connection, so a burst reuses threads (starting one costs ~0.1 ms,
a third of the channel-open round trip) while an idle forward holds none.
"""

from __future__ import annotations

import contextlib
import glob
import ipaddress
import logging
import os
import queue
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion_tray.adapters.relay import Relay, RelayHandle, RelayStats
from bastion_tray.core.config import ForwardConfig
from bastion_tray.core.errors import BastionTrayError, ForwardError

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024  # a pool opening hundreds at once must see no resets (ssh -L: 128)
CLOSE_WAIT_SECONDS = 5.0  # close() waits this long for the relay to report closes
WORKER_LINGER_SECONDS = 2.0  # an idle worker waits this long for the next connection

#: (the client's (host, port), its socket) → a Channel to the target for the relay, or something
#: that `adopt`s the socket itself (a stream handed to an ssh master, adapters/mux.py); may block
#: long, may raise BastionTrayError
Connector = Callable[[tuple[str, int], socket.socket], Any]


@dataclass(eq=False)
class _Conn:
    """One accepted client: waiting in the queue, waiting for its channel, then relayed."""

    sock: socket.socket
    peer: tuple[str, int]
    handle: RelayHandle | Any = None  # a RelayHandle, or a MuxHandle: the same shape
    relayed: bool = False  # handed to the relay, which owns and closes the socket now
    cancelled: bool = False  # close_connections() came while it was handed over
    finished: bool = False  # counted out of active_connections


class Forward:
    """A listener on `config.bind:config.local_port`. A handle: `close()` it, or use `with`.
    `on_change` runs on the forward's and the relay's threads: keep it short and thread-safe."""

    def __init__(self, config: ForwardConfig, connector: Connector, relay: Relay, *,
                 profile: str, on_change: Callable[[], None] | None = None,
                 fast: Connector | None = None) -> None:
        self.config = config
        self._connector, self._relay, self._on_change = connector, relay, on_change
        self._fast = fast  # on the accept thread: something that adopts the socket, or None
        self._profile = profile  # for the names in messages
        self._context = f"[profile={profile} fwd={config.name}]"
        self._lock = threading.Lock()  # guards every field below that changes
        self._conns: set[_Conn] = set()
        self._total = self._closed_up = self._closed_down = 0  # closed_*: bytes of closed ones
        self._workers: set[threading.Thread] = set()
        self._idle_workers = 0  # waiting on the queue and not yet promised a connection
        self._queue: queue.SimpleQueue[_Conn | None] = queue.SimpleQueue()
        self._listener: socket.socket | None = None  # None: not listening
        self._address: tuple[str, int] = (config.bind, config.local_port)
        self._accept_thread = threading.Thread()
        self._stop: socket.socket | None = None  # wakes the accept thread (a socketpair's end)

    def start(self) -> Forward:
        """Bind and listen. Raises ForwardError (port in use, permission, bad address)."""
        if self._listener is None:
            self._listener = self._bind()
            self._address = self._listener.getsockname()[:2]
            stop, self._stop = socket.socketpair()
            self._accept_thread = threading.Thread(
                target=self._accept_loop, args=(self._listener, stop), daemon=True,
                name=f"forward-{self._profile}-{self.config.name}")
            self._accept_thread.start()
            log.info("%s listening on %s:%d → %s:%d", self._context, *self._address,
                     self.config.remote_host, self.config.remote_port)
        return self

    def close_connections(self) -> None:
        """Close every open connection, also those still waiting for the bastion; keep
        listening. Relayed ones are counted out when the relay reports them closed."""
        with self._lock:
            conns = list(self._conns)
            for conn in conns:
                conn.cancelled = True  # a worker handing it over right now closes it after
        waiting = [conn for conn in conns if conn.handle is None and not conn.relayed]
        for conn in conns:
            if conn.handle is not None:
                conn.handle.close()
        if [conn for conn in waiting if self._finish(conn, notify=False)]:
            self._notify()

    def close(self) -> None:
        """Stop listening and close every connection, for good (make a new Forward to listen
        again). A worker inside a slow connector closes what it gets when the connector returns."""
        stop, self._stop = self._stop, None
        if stop is not None:
            self._listener = None
            with contextlib.suppress(OSError):
                stop.send(b"x")  # the accept thread closes the listener as it ends
            self._accept_thread.join(CLOSE_WAIT_SECONDS)
            stop.close()
            log.info("%s stopped listening on %s:%d", self._context, *self._address)
        with self._lock:
            handles = [c.handle for c in self._conns if c.handle is not None]
            workers = list(self._workers)
        self.close_connections()
        for handle in handles:
            handle.wait_closed(CLOSE_WAIT_SECONDS)
        for _ in workers:
            self._queue.put(None)  # one stop sign per worker
        deadline = time.monotonic() + 1.0
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Forward:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the listener is bound to, as the OS reports it."""
        return self._address

    @property
    def local_port(self) -> int:
        """The port actually bound: config.local_port, or the kernel's pick for 0."""
        return self._address[1]

    @property
    def listening(self) -> bool:
        return self._listener is not None

    @property
    def active_connections(self) -> int:
        """Accepted and not yet closed, including those waiting for the connector."""
        with self._lock:
            return len(self._conns)

    @property
    def total_connections(self) -> int:
        with self._lock:
            return self._total

    @property
    def bytes_up(self) -> int:
        with self._lock:
            return self._closed_up + sum(c.handle.bytes_up for c in self._conns if c.handle)

    @property
    def bytes_down(self) -> int:
        with self._lock:
            return self._closed_down + sum(c.handle.bytes_down for c in self._conns if c.handle)

    def _bind(self) -> socket.socket:
        bind, port = self.config.bind, self.config.local_port
        sock = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET)
        try:
            if os.name == "posix":  # a restarted daemon rebinds past TIME_WAIT; no REUSEPORT
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            elif hasattr(socket, "SO_EXCLUSIVEADDRUSE"):  # Windows: nobody may share it
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
            sock.bind((bind, port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)  # a client gone between select and accept must not block
        except OSError as exc:
            sock.close()
            raise self._bind_error(exc) from None
        return sock

    def _bind_error(self, exc: OSError) -> ForwardError:
        where = f"{self.config.bind}:{self.config.local_port}"
        section = f"[profiles.{self._profile}.forwards.{self.config.name}]"
        if exc.errno in (getattr(os, "EADDRINUSE", 98), 10048):
            holder = find_port_holder(self.config.bind, self.config.local_port)
            by = f" by pid {holder[0]} ({holder[1]})" if holder else ""
            return ForwardError(f"{where} is already in use{by}",
                                hint=f"change local_port in {section} or stop that program")
        if exc.errno in (getattr(os, "EACCES", 13), 10013):
            return ForwardError(f"cannot listen on {where}: permission denied",
                                hint=f"use a local_port above 1023 in {section}")
        return ForwardError(f"cannot listen on {where}: {exc.strerror or exc}",
                            hint=f"check bind and local_port in {section}")

    def _accept_loop(self, listener: socket.socket, stop: socket.socket) -> None:
        with listener, stop, selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(stop, selectors.EVENT_READ)
            while True:
                if any(key.fileobj is stop for key, _ in selector.select()):
                    return
                try:
                    sock, peer = listener.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                except OSError as exc:  # out of descriptors and kin: back off, don't spin
                    log.warning("%s accept failed: %s", self._context, exc)
                    time.sleep(0.2)
                    continue
                self._admit(sock, (str(peer[0]), int(peer[1])))

    def _admit(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):  # a client that already reset fails later, quietly
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock, peer)
        if self._fast is not None and self._hand_over_now(conn):
            return
        worker = None
        with self._lock:
            self._conns.add(conn)
            self._total += 1
            self._queue.put(conn)  # under the lock, so a worker timing out sees it
            if self._idle_workers:
                self._idle_workers -= 1
            else:
                worker = threading.Thread(target=self._work, daemon=True,
                                          name=f"forward-{self.config.name}-worker")
                self._workers.add(worker)
        self._notify()
        if worker is not None:
            worker.start()

    def _hand_over_now(self, conn: _Conn) -> bool:
        """The fast path: the link is up and its ssh master takes the socket at once, with no
        worker thread in between (a client that speaks first waits for nothing of ours)."""
        assert self._fast is not None
        try:
            handed = self._fast(conn.peer, conn.sock)
        except Exception:  # never fatal: the worker's path says what is wrong
            log.debug("%s fast path failed", self._context, exc_info=True)
            handed = None
        if handed is None:
            return False
        with self._lock:
            self._conns.add(conn)
            self._total += 1
            conn.relayed = True
        self._notify()
        handle = handed.adopt(conn.sock, lambda stats: self._relayed(conn, stats))
        with self._lock:
            conn.handle = handle
            cancelled = conn.cancelled
        if cancelled:  # close_connections() came while we adopted it
            handle.close()
        return True

    def _work(self) -> None:
        try:
            while True:
                try:
                    conn = self._queue.get(timeout=WORKER_LINGER_SECONDS)
                except queue.Empty:
                    with self._lock:
                        if self._queue.empty():
                            self._idle_workers -= 1
                            return
                    continue
                if conn is None:
                    return
                self._connect(conn)
                with self._lock:
                    self._idle_workers += 1
        finally:
            with self._lock:
                self._workers.discard(threading.current_thread())

    def _connect(self, conn: _Conn) -> None:
        with self._lock:
            if conn.finished:  # closed while it waited in the queue
                return
        try:
            channel = self._connector(conn.peer, conn.sock)
        except Exception as exc:  # BastionTrayError; anything else is a connector's bug
            self._drop(conn, exc)
            return
        with self._lock:
            conn.relayed = not conn.finished  # else: closed while we waited for the bastion
        if not conn.relayed:
            with contextlib.suppress(Exception):
                channel.close()
            return
        adopt = getattr(channel, "adopt", None)
        try:  # not under our lock: add() already moves the first bytes
            if adopt is not None:  # OpenSSH carries it: the socket is the watcher's now
                handle = adopt(conn.sock, lambda stats: self._relayed(conn, stats))
            else:
                handle = self._relay.add(conn.sock, channel,
                                         lambda stats: self._relayed(conn, stats))
        except Exception as exc:  # the relay was closed (it closed both ends), or broke
            self._drop(conn, exc)
            return
        with self._lock:
            conn.handle = handle
            cancelled = conn.cancelled
        if cancelled:  # close_connections() came while add() ran
            handle.close()

    def _drop(self, conn: _Conn, exc: Exception) -> None:
        why = exc.message if isinstance(exc, BastionTrayError) else f"{type(exc).__name__}: {exc}"
        log.warning("%s connection from %s:%d closed: %s", self._context, *conn.peer, why)
        self._finish(conn)

    def _relayed(self, conn: _Conn, stats: RelayStats) -> None:  # on the relay thread
        log.debug("%s connection from %s:%d closed (%s): %d bytes up, %d down", self._context,
                  *conn.peer, stats.reason, stats.bytes_up, stats.bytes_down)
        with self._lock:
            self._closed_up += stats.bytes_up
            self._closed_down += stats.bytes_down
        self._finish(conn)

    def _finish(self, conn: _Conn, *, notify: bool = True) -> bool:
        """Count the connection out (once) and close its socket; True if it was still in."""
        with self._lock:
            if conn.finished:
                return False
            conn.finished = True
            self._conns.discard(conn)
        if not conn.relayed:  # the relay closes what it owns
            with contextlib.suppress(OSError):
                conn.sock.close()
        if notify:
            self._notify()
        return True

    def _notify(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                log.exception("%s on_change callback failed", self._context)


def find_port_holder(bind: str, port: int) -> tuple[int, str] | None:
    """(pid, command) of the process listening where `bind:port` would, if the OS tells: Linux
    /proc only, and only our own processes unless we are root. None otherwise."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(bind, port)}
    for link in glob.glob("/proc/[0-9]*/fd/*") if wanted else []:
        with contextlib.suppress(OSError):
            if os.readlink(link) in wanted:
                pid = link.split("/")[2]
                return int(pid), Path(f"/proc/{pid}/comm").read_text().strip() or "?"
    return None


def _listening_inodes(bind: str, port: int) -> set[str]:
    """Inodes of the LISTEN sockets (state 0A) in /proc/net/tcp{,6} that clash with bind:port."""
    try:
        ours: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(bind)
    except ValueError:  # a name: compare ports only
        ours = None
    inodes, lines = set(), []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            lines += Path(table).read_text().splitlines()
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or fields[3] != "0A":
            continue
        address, _, hex_port = fields[1].partition(":")
        raw = b"".join(int(address[i:i + 8], 16).to_bytes(4, sys.byteorder)  # host-order words
                       for i in range(0, len(address), 8))
        theirs = ipaddress.ip_address(raw)
        if int(hex_port, 16) == port and (ours is None or theirs == ours
                                          or theirs.is_unspecified or ours.is_unspecified):
            inodes.add(fields[9])
    return inodes

