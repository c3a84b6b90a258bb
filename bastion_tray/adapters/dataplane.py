"""The daemon's link to a bastion: the paramiko connection — host-key checks, commands, the
keepalive that decides the link is lost — plus, where OpenSSH can run, an `ssh` master that
carries the forwarded bytes (adapters/mux.py). If the master dies, the paramiko transport carries
them until a new master is up: a connection is never refused for the data plane's sake.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from bastion_tray.adapters.agent import PrivateAgent
from bastion_tray.adapters.mux import MuxMaster, MuxStream, unsupported_reason
from bastion_tray.adapters.muxwatch import Handed, MuxWatch
from bastion_tray.adapters.ssh import FAST_CIPHERS, BastionConnection
from bastion_tray.core.config import BastionConfig
from bastion_tray.core.errors import BastionTrayError, SSHError
from bastion_tray.core.trust import bastion_alias

log = logging.getLogger(__name__)

RESTART_AFTER = 30.0  # seconds between attempts to bring a dead master back
MASTER_CIPHERS = (*FAST_CIPHERS, "chacha20-poly1305@openssh.com")  # the link's order, then ssh's


class DataPlaneLink:
    """A BastionLink (service/links.py) whose streams go through OpenSSH when it can."""

    def __init__(self, conn: BastionConnection, bastion: BastionConfig, *, mode: str,
                 watch: MuxWatch, keepalive_interval: float,
                 master_key: Callable[[], Any] | None = None) -> None:
        self.conn, self._bastion, self._mode, self._watch = conn, bastion, mode, watch
        # ec2-instance-connect: a key the bastion accepts *now* for each master (re)start (a
        # pushed key is valid 60 s); None: the key the link authenticated with
        self._master_key = master_key
        self._keepalive = keepalive_interval
        self._context = f"[profile={conn.profile}]"
        self._lock = threading.Lock()
        self._restarting = threading.Lock()  # one restart of a dead master at a time
        self._master: MuxMaster | None = None
        self._agent: PrivateAgent | None = None
        self._last_try = 0.0
        self._closed = False

    def start(self) -> DataPlaneLink:
        """Bring the master up (mode auto/openssh). With "openssh", a master that cannot start
        is an error; with "auto", the paramiko transport carries the bytes and the log says why."""
        if self._mode == "paramiko":
            return self
        reason = unsupported_reason()
        if reason is None:
            try:
                self._start_master()
                return self
            except SSHError as exc:
                reason = exc.message
            except Exception as exc:  # a bug of ours must not cost the link: paramiko carries
                log.exception("%s starting the ssh master failed", self._context)
                reason = f"starting the ssh master failed ({type(exc).__name__}: {exc})"
        if self._mode == "openssh":
            self.close()
            raise SSHError(f"data_plane = \"openssh\", but {reason}",
                           hint='set data_plane = "auto" in [settings] to fall back to paramiko')
        log.warning("%s forwarded bytes go through paramiko: %s", self._context, reason)
        return self

    def _start_master(self) -> None:
        conn = self.conn
        self._last_try = time.monotonic()
        auth_key = conn.auth_key
        if self._master_key is not None:
            try:
                auth_key = self._master_key()
            except BastionTrayError as exc:
                raise SSHError(f"no ec2-instance-connect key for the ssh master: {exc.message}",
                               hint=exc.hint) from None
        if conn.server_key is None or auth_key is None:
            raise SSHError("the link has no verified host key or key to lend the ssh master")
        agent = None
        if type(auth_key).__name__ != "AgentKey":  # else the user's own agent signs
            agent = PrivateAgent(auth_key)
        try:
            master = MuxMaster.start(
                host=conn.host, port=conn.port, user=self._bastion.user,
                known_host_line=f"{conn.server_key.get_name()} {conn.server_key.get_base64()}",
                alias=bastion_alias(conn.profile),
                agent_socket=agent.path if agent is not None else None,
                keepalive_interval=self._keepalive, ciphers=MASTER_CIPHERS,
                context=self._context)
        except BaseException:
            if agent is not None:
                agent.close()
            raise
        with self._lock:
            old, self._master = (self._master, self._agent), master
            self._agent = agent
            closed = self._closed
        for thing in old:
            if thing is not None:
                thing.close()
        if closed:
            self.close()
            return
        log.info("%s ssh master (pid %d) carries the forwarded bytes", self._context, master.pid)

    # -- the BastionLink shape ------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.conn.alive

    @property
    def data_plane(self) -> str:
        master = self._master
        return "openssh" if master is not None and master.alive else "paramiko"

    @property
    def own_endpoints(self) -> list[tuple[str, int]]:
        """Our connections other than the paramiko one, as the bastion sees them."""
        master = self._master
        return [master.endpoint] if master is not None and master.alive else []

    def open_channel(self, host: str, port: int,
                     origin: tuple[str, int] = ("127.0.0.1", 0)) -> Any:
        return self.conn.open_channel(host, port, origin)

    def run(self, command: str, timeout: float) -> str:
        return self.conn.run(command, timeout)

    def stream(self, host: str, port: int, sock: socket.socket | None,
               origin: tuple[str, int] = ("127.0.0.1", 0)) -> Any:
        """What a forward's connection goes through: a `Handed` stream (the master carries the
        socket) or, without a master, a paramiko channel for the relay."""
        if sock is not None:
            master = self._usable_master()
            if master is not None:
                fd = sock.fileno()
                try:
                    return Handed(self._watch, master.stdio_forward(host, port, fd, fd))
                except SSHError:
                    if master.alive:
                        raise  # the bastion refused the target: paramiko would fail the same
                    self._lost_master(master)
        return self.conn.open_channel(host, port, origin)

    def stream_now(self, host: str, port: int, sock: socket.socket) -> Handed | None:
        """The fast path, on the accept thread: hand `sock` to a live master without waiting
        for its answer (the watch reads it). None when that can't be done at once."""
        master = self._master
        if master is None or not master.alive:
            return None
        fd = sock.fileno()
        try:
            return Handed(self._watch, master.begin_stdio_forward(host, port, fd, fd))
        except (BlockingIOError, SSHError):
            return None  # the slow path waits for room, or learns what is wrong

    def stdio(self, host: str, port: int, fd_in: int, fd_out: int) -> MuxStream | None:
        """A `proxy` stream between two descriptors, carried by the master; None without one."""
        master = self._usable_master()
        if master is None:
            return None
        try:
            return master.stdio_forward(host, port, fd_in, fd_out)
        except SSHError:
            if master.alive:
                raise
            self._lost_master(master)
            return None

    def _usable_master(self) -> MuxMaster | None:
        master = self._master
        if master is not None and master.alive:
            return master
        if master is not None:
            self._lost_master(master)
        if (self._mode == "paramiko" or self._closed or not self.conn.alive
                or time.monotonic() - self._last_try < RESTART_AFTER
                or unsupported_reason() is not None):
            return None
        if not self._restarting.acquire(blocking=False):
            return None  # another connection is bringing it back: this one takes paramiko
        try:
            if time.monotonic() - self._last_try >= RESTART_AFTER:
                self._start_master()
        except Exception as exc:  # SSHError, or a bug of ours: paramiko carries on
            log.warning("%s the ssh master did not come back: %s", self._context,
                        getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}")
            return None
        finally:
            self._restarting.release()
        return self._master

    def _lost_master(self, master: MuxMaster) -> None:
        with self._lock:
            if self._master is not master:
                return
            self._master = None
        log.warning("%s the ssh master died (%s); paramiko carries new connections",
                    self._context, master.why_dead())
        master.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            things = (self._master, self._agent)
            self._master = self._agent = None
        for thing in things:
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close()
        self.conn.close()
