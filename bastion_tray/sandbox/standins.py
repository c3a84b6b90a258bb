"""Embedded stand-ins for the sandbox's peers where OpenSSH sshd or MariaDB are not installed.

Each is a handle on its own threads, listening on one loopback address: `start()`, `stop()`
(drops every connection at once, like a power-off), `is_running()`, `close()`. The SSH ones
run no commands (see `StandinBastion`); the database one is not MySQL (`StandinDatabase`).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import selectors
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion_tray.core.netguard import is_loopback
from bastion_tray.sandbox.errors import SandboxError
from bastion_tray.sandbox.keys import KeyPair
from bastion_tray.sandbox.net import require_loopback, ssh_banner
from bastion_tray.sandbox.procs import wait_for

log = logging.getLogger(__name__)

# paramiko logs every readiness probe (connect, read the banner, hang up) as an ERROR with a
# traceback; the stand-in logs what matters itself
_TRANSPORT_LOG = "bastion_tray.sandbox.standins.transport"
logging.getLogger(_TRANSPORT_LOG).setLevel(logging.CRITICAL)

SERVER_VERSION = "SSH-2.0-BastionTrayStandin_1.0"
GREETING = "stand-in database ({reason}) — type a line, get it back"
CONNECT_TIMEOUT = 3.0  # a forward's connect to its loopback destination
POLL = 0.1  # how often a blocked loop looks at the stop flag
READ_SIZE = 64 * 1024


def generate_ed25519(path: Path, comment: str) -> KeyPair:
    """keys.generate_ed25519 without ssh-keygen: `path` (OpenSSH format, 0600) and `path.pub`."""
    key, pub = Ed25519PrivateKey.generate(), path.with_name(path.name + ".pub")
    path.unlink(missing_ok=True)  # never reuse a key: O_EXCL below
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH,
                                    ser.NoEncryption()))
    line = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
    pub.write_text(f"{line} {comment}\n")
    return KeyPair(path, line)


def _close(resource: Any) -> None:
    if isinstance(resource, socket.socket):
        with contextlib.suppress(OSError):
            resource.shutdown(socket.SHUT_RDWR)  # wakes a recv() blocked in another thread
    with contextlib.suppress(Exception):
        resource.close()


class _Service(socketserver.ThreadingTCPServer):
    """One run of a stand-in: its listener, a thread per connection, and what those hold."""

    allow_reuse_address = True  # a restart rebinds at once, despite the power-off's TIME_WAITs
    daemon_threads = True  # an interpreter that exits without close() must not wait for them

    def __init__(self, name: str, address: tuple[str, int],
                 serve: Callable[[socket.socket, _Service], None]) -> None:
        self.name, self._serve, self.stopping = name, serve, threading.Event()
        self._lock, self._workers = threading.Lock(), list[threading.Thread]()
        self._held: set[Any] = set()  # sockets, transports, channels: what close() must close
        try:
            super().__init__(address, socketserver.BaseRequestHandler)
        except OSError as exc:
            raise SandboxError(f"stand-in {name} cannot listen on {address[0]}:{address[1]}: "
                               f"{exc}") from None
        self.spawn(self.serve_forever, POLL)

    def spawn(self, target: Callable[..., None], *args: Any) -> bool:
        """Run `target(*args)` in a tracked thread; False (nothing started) once closing."""
        with self._lock:
            if self.stopping.is_set():
                return False
            self._workers = [t for t in self._workers if t.is_alive()]
            thread = threading.Thread(target=target, args=args, daemon=True,
                                      name=f"standin-{self.name}-{target.__name__.strip('_')}")
            self._workers.append(thread)
            thread.start()
        return True

    def hold(self, resource: Any) -> bool:
        """Track what `close()` must close; once closing, close it at once and return False."""
        with self._lock:
            if not self.stopping.is_set():
                self._held.add(resource)
                return True
        _close(resource)
        return False

    def release(self, resource: Any) -> None:
        with self._lock:
            self._held.discard(resource)
        _close(resource)

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.hold(request) and not self.spawn(self.process_request_thread, request,
                                                 client_address):
            self.release(request)

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            self._serve(request, self)
        except Exception as exc:  # one connection's trouble is never the service's
            log.debug("[sandbox standin=%s] connection ended: %s", self.name, exc)

    def shutdown_request(self, request: Any) -> None:
        self.release(request)

    def close(self, timeout: float = 5.0) -> None:
        """Drop every connection at once, like a power-off, and join every thread."""
        with self._lock:
            self.stopping.set()
            held, threads, self._held = list(self._held), list(self._workers), set()
        self.shutdown()  # the accept loop
        self.server_close()  # the listener
        for resource in held:
            _close(resource)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.0))


class _StandinServer:
    """start/stop/is_running/answers around a `_Service`, as the watcher and sandbox use."""

    def __init__(self, name: str, host: str, port: int) -> None:
        self.name, self.host, self.port = name, require_loopback(host, f"{name} address"), port
        self._lock = threading.RLock()
        self._service: _Service | None = None
        self._closed = False

    def _serve(self, conn: socket.socket, service: _Service) -> None:
        raise NotImplementedError  # each stand-in speaks its own protocol

    def is_running(self) -> bool:
        return self._service is not None

    def start(self) -> None:
        """Listen unless listening already; the port accepts connections when this returns."""
        with self._lock:
            if self._closed:
                raise SandboxError(f"not starting the stand-in {self.name}: it is closed")
            if self._service is None:
                self._service = _Service(self.name, (self.host, self.port), self._serve)
                log.info("[sandbox standin=%s] %s on %s:%d", self.name, type(self).__name__,
                         self.host, self.port)

    def stop(self) -> None:
        """Stop listening and drop every connection at once, like a machine that powers off."""
        with self._lock:
            service, self._service = self._service, None
        if service is not None:
            service.close()
            log.info("[sandbox standin=%s] stopped", self.name)

    def close(self) -> None:
        """Stop for good: a watcher that polls once more cannot start it again."""
        with self._lock:
            self._closed = True
        self.stop()


class StandinBastion(_StandinServer):
    """A paramiko SSH server for the sandbox key and user: `direct-tcpip` to loopback only.

    It refuses every other channel and request — session channels, so shell, exec and subsystems;
    remote forwarding; anything else — so no command ever runs on this machine through it, which
    keeps the sandbox's "no shutdown, no sudo" rule without stubs.
    """

    forwarding = True

    def __init__(self, name: str, host: str, port: int, *, user: str, host_key: Path,
                 client_key_line: str) -> None:
        super().__init__(name, host, port)
        self._host_key = paramiko.PKey.from_path(host_key)
        key_type, blob = client_key_line.split()[:2]
        self._authorized = paramiko.PKey.from_type_string(key_type, base64.b64decode(blob))
        self._user = user

    def answers(self) -> bool:
        return ssh_banner(self.host, self.port, timeout=1.0) is not None

    def wait_answering(self, timeout: float = 10.0) -> None:
        if not wait_for(self.answers, timeout=timeout):
            raise SandboxError(f"stand-in {self.name} on {self.host}:{self.port} did not answer "
                               f"in {timeout:.0f}s")

    def restart(self, timeout: float = 10.0) -> None:
        """Power-cycle the SSH server only (every connection drops); wait until it answers."""
        self.stop()
        self.start()
        self.wait_answering(timeout)

    def permits(self, user: str, key: Any) -> bool:
        return bool(user == self._user and key.asbytes() == self._authorized.asbytes())

    def _serve(self, conn: socket.socket, service: _Service) -> None:
        transport = paramiko.Transport(conn)
        transport.name = f"standin-{self.name}-transport"  # a Thread: named for leak reports
        transport.local_version = SERVER_VERSION
        transport.set_log_channel(_TRANSPORT_LOG)
        transport.add_server_key(self._host_key)
        policy = _Policy(self, service)
        if not service.hold(transport):
            return
        try:
            transport.start_server(server=policy)  # paramiko's own thread runs the protocol
            while not service.stopping.is_set() and transport.is_active():
                channel = transport.accept(POLL)  # only direct-tcpip ones get this far
                if channel is None:
                    continue
                target = policy.take_target(channel.get_id())
                if target is None or not (service.hold(channel)
                                          and service.spawn(_relay, channel, target, service)):
                    service.release(channel)
                    service.release(target)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            log.debug("[sandbox standin=%s] session ended: %s", self.name, exc)
        finally:
            policy.drop_targets()
            service.release(transport)
            if transport.is_alive():
                transport.join(2.0)


class StandinAppServer(StandinBastion):
    """The app server's stand-in: accepts the sandbox key, then refuses everything."""

    forwarding = False


class _Policy(paramiko.ServerInterface):  # type: ignore[misc]
    """What a stand-in allows. paramiko calls it in the transport thread: it must be quick."""

    def __init__(self, server: StandinBastion, service: _Service) -> None:
        self._server, self._service = server, service
        self._lock = threading.Lock()
        self._targets: dict[int, socket.socket] = {}  # channel id → its connected destination

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: Any) -> int:
        # paramiko checked the signature before it asks this
        if self._server.permits(username, key):
            return int(paramiko.AUTH_SUCCESSFUL)
        log.info("[sandbox standin=%s] refused key %s for %r", self._server.name,
                 key.fingerprint, username)
        return int(paramiko.AUTH_FAILED)

    def check_channel_request(self, kind: str, chanid: int) -> int:
        log.info("[sandbox standin=%s] refused a %r channel", self._server.name, kind)
        return int(paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED)

    def check_channel_direct_tcpip_request(self, chanid: int, origin: tuple[str, int],
                                           destination: tuple[str, int]) -> int:
        host, port = destination
        if not self._server.forwarding or not is_loopback(host):
            log.info("[sandbox standin=%s] refused forwarding to %s:%d", self._server.name,
                     host, port)
            return int(paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED)
        # connect now, as sshd does, so that a closed port is "connect failed" to the client;
        # on loopback that is answered at once. Names (localhost) are never looked up.
        address = "127.0.0.1" if host.lower().startswith("localhost") else host
        try:
            target = socket.create_connection((address, port), timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            log.info("[sandbox standin=%s] forward to %s:%d failed: %s", self._server.name,
                     host, port, exc)
            return int(paramiko.OPEN_FAILED_CONNECT_FAILED)
        target.settimeout(None)
        if not self._service.hold(target):
            return int(paramiko.OPEN_FAILED_RESOURCE_SHORTAGE)
        with self._lock:
            self._targets[chanid] = target
        return int(paramiko.OPEN_SUCCEEDED)

    def take_target(self, chanid: int) -> socket.socket | None:
        with self._lock:
            return self._targets.pop(chanid, None)

    def drop_targets(self) -> None:
        with self._lock:
            targets, self._targets = list(self._targets.values()), {}
        for target in targets:
            self._service.release(target)


def _relay(channel: Any, target: socket.socket, service: _Service) -> None:
    """Bytes both ways between a channel and its destination; an EOF travels as a half-close."""
    try:
        with selectors.DefaultSelector() as selector:
            # what to do with what a side sends: (pass it on, pass its EOF on)
            selector.register(channel, selectors.EVENT_READ,
                              (target.sendall, lambda: target.shutdown(socket.SHUT_WR)))
            selector.register(target, selectors.EVENT_READ,
                              (channel.sendall, channel.shutdown_write))
            while selector.get_map() and not service.stopping.is_set():
                for ready, _ in selector.select(POLL):
                    send, send_eof = ready.data
                    if data := ready.fileobj.recv(READ_SIZE):  # type: ignore[union-attr]
                        send(data)
                    else:
                        selector.unregister(ready.fd)  # a closed channel may not map back
                        send_eof()
    except (OSError, EOFError, paramiko.SSHException) as exc:
        log.debug("[sandbox standin] forward ended: %s", exc)
    finally:
        service.release(channel)
        service.release(target)


class StandinDatabase(_StandinServer):
    """NOT MySQL (pymysql fails): greets with one line, then sends back every line it gets.

    At the client's EOF it returns the rest of an unterminated last line and closes its side,
    so a half-close through a forward shows.
    """

    def __init__(self, name: str, host: str, port: int, *, reason: str) -> None:
        super().__init__(name, host, port)
        self.greeting = GREETING.format(reason=reason)

    def _serve(self, conn: socket.socket, service: _Service) -> None:
        conn.sendall(self.greeting.encode() + b"\n")
        pending = b""
        while data := conn.recv(READ_SIZE):
            *lines, pending = (pending + data).split(b"\n")
            conn.sendall(b"".join(line + b"\n" for line in lines))
        if pending:
            conn.sendall(pending)
        conn.shutdown(socket.SHUT_WR)
