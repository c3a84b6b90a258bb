"""OpenSSH as the data plane: one `ssh` ControlMaster per link, fed accepted sockets by descriptor.

Each local connection of a forward (and each `proxy`'s stdio) is handed to the master with the
mux protocol's `MUX_C_NEW_STDIO_FWD` (PROTOCOL.mux), the descriptors passed with SCM_RIGHTS, so
its bytes move in OpenSSH's C loop, not in Python. One mux connection carries one stream: the
master closes it when the stream's channel closes, which is how the daemon counts it out.

The master runs `echo bastion-tray-master $SSH_CONNECTION; exec cat` as its own session: the
line says it authenticated and names its TCP endpoint as the bastion sees it (so the session
count can leave it out), an exec session makes sshd set TCP_NODELAY (so a server that speaks
first — MySQL — is not held back 40 ms by Nagle and a delayed ACK), and `cat` on a pipe that only
this process holds ends the session, and with it the master, if the daemon dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bastion_tray.core.errors import SSHError
from bastion_tray.core.netguard import check_address

log = logging.getLogger(__name__)

HELLO, NEW_STDIO_FWD = 0x00000001, 0x10000008
S_PERMISSION_DENIED, S_FAILURE, S_SESSION_OPENED = 0x80000002, 0x80000003, 0x80000006
MUX_VERSION = 4
READY_MARK = "bastion-tray-master"
START_TIMEOUT = 20.0
MAX_NOISE_LINES = 200  # lines a login script may print before the ready mark
MAX_MESSAGE = 256 * 1024


def unsupported_reason(ssh: str | None = None) -> str | None:
    """Why OpenSSH cannot be the data plane here; None when it can (POSIX, `ssh` on PATH, fd
    passing). Windows' OpenSSH has no ControlMaster: paramiko carries the bytes there."""
    if os.name != "posix" or not hasattr(socket, "send_fds"):
        return "this platform cannot pass descriptors to an ssh ControlMaster"
    if (ssh or shutil.which("ssh")) is None:
        return "no `ssh` (OpenSSH client) on PATH"
    return None


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _message(kind: int, body: bytes) -> bytes:
    payload = struct.pack(">I", kind) + body
    return struct.pack(">I", len(payload)) + payload


def _read_exact(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise EOFError("the ssh master closed the mux connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_message(sock: socket.socket) -> tuple[int, bytes]:
    (length,) = struct.unpack(">I", _read_exact(sock, 4))
    if not 4 <= length <= MAX_MESSAGE:
        raise EOFError(f"the ssh master sent a mux message of {length} bytes")
    payload = _read_exact(sock, length)
    return struct.unpack(">I", payload[:4])[0], payload[4:]


def _reason(body: bytes) -> str:
    """The reason string of a MUX_S_FAILURE / PERMISSION_DENIED body (after the request id)."""
    if len(body) < 8:
        return "no reason given"
    (size,) = struct.unpack(">I", body[4:8])
    return body[8:8 + size].decode("utf-8", "replace") or "no reason given"


def refusal(where: str, kind: int, body: bytes) -> SSHError:
    """The error for a master's answer other than MUX_S_SESSION_OPENED."""
    if kind in (S_FAILURE, S_PERMISSION_DENIED):
        return SSHError(f"the bastion could not open a connection to {where}: {_reason(body)}",
                        hint="check the host and port in the config, as the bastion resolves "
                             "them, and that the target's security group admits the bastion")
    return SSHError(f"the ssh master answered {kind:#x} to a stdio forward to {where}")


class MuxStream:
    """One stream the master carries: its mux connection, readable (EOF) once it is over.
    `opened` False: the master's hello and answer are still to be read (see muxwatch.py)."""

    def __init__(self, control: socket.socket, description: str, *, opened: bool) -> None:
        self.control = control
        self.description = description
        self.opened = opened
        self.pending = b""  # bytes of the master's answers read so far, not yet a message

    def fileno(self) -> int:
        return self.control.fileno()

    def close(self) -> None:
        """End the stream: the master closes its channel when the mux connection goes."""
        with contextlib.suppress(OSError):
            self.control.close()


class MuxMaster:
    """An `ssh -M` process connected to the bastion. `stdio_forward()` hands it descriptors;
    `close()` ends it (and every stream it carries)."""

    def __init__(self, proc: subprocess.Popen[bytes], workdir: Path, endpoint: tuple[str, int],
                 context: str) -> None:
        self._proc, self._workdir, self._context = proc, workdir, context
        self.control_path = workdir / "c"
        self.endpoint = endpoint  # our end of the master's TCP connection, as the bastion sees it
        self._closed = False
        self._stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True,
                         name=f"ssh-master-stderr{context}").start()

    @classmethod
    def start(cls, *, host: str, port: int, user: str, known_host_line: str, alias: str,
              agent_socket: Path | None, keepalive_interval: float,
              ciphers: tuple[str, ...] = (), context: str = "",
              timeout: float = START_TIMEOUT, ssh: str = "ssh") -> MuxMaster:
        """Connect and authenticate a master; raise SSHError (with ssh's own words) when it
        cannot. `known_host_line` (`type base64`) is the only key it accepts: the one the
        daemon's own link verified."""
        check_address(host, "an ssh master")
        workdir = Path(tempfile.mkdtemp(prefix="bt-mux-"))  # short: sun_path has ~104 bytes
        known_hosts = workdir / "known_hosts"
        known_hosts.write_text(f"{alias} {known_host_line}\n")
        known_hosts.chmod(0o600)
        argv = [ssh, "-F", "none", "-M", "-S", str(workdir / "c"), "-T", "-e", "none",
                "-p", str(port), "-l", user,
                "-o", "ControlPersist=no", "-o", "BatchMode=yes",
                "-o", f"HostKeyAlias={alias}", "-o", f"UserKnownHostsFile={known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                "-o", "UpdateHostKeys=no", "-o", "CheckHostIP=no",
                "-o", f"ServerAliveInterval={max(1, int(keepalive_interval))}",
                "-o", "ServerAliveCountMax=3", "-o", f"ConnectTimeout={int(timeout)}",
                "-o", "ForwardAgent=no", "-o", "ForwardX11=no", "-o", "ClearAllForwardings=yes",
                "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
                "-o", "LogLevel=ERROR"]
        if agent_socket is not None:
            argv += ["-o", f"IdentityAgent={agent_socket}"]
        if ciphers:  # OpenSSH's own order puts chacha20 first: slower where AES is in hardware
            argv += ["-o", f"Ciphers={','.join(ciphers)}"]
        argv += [host, f"echo {READY_MARK} $SSH_CONNECTION; exec cat"]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise SSHError(f"cannot run ssh for the data plane: {exc}") from None
        try:
            endpoint = cls._wait_ready(proc, workdir / "c", timeout)
        except BaseException:
            _end(proc)
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return cls(proc, workdir, endpoint, context)

    @staticmethod
    def _wait_ready(proc: subprocess.Popen[bytes], control: Path,
                    timeout: float) -> tuple[str, int]:
        assert proc.stdout is not None and proc.stderr is not None
        found: list[bytes] = []

        def read_mark() -> None:  # past what a chatty .bashrc prints first
            for _ in range(MAX_NOISE_LINES):
                raw = proc.stdout.readline()  # type: ignore[union-attr]
                found[:] = [raw]
                if not raw or raw.startswith(READY_MARK.encode()):
                    return

        reader = threading.Thread(target=read_mark, daemon=True)
        reader.start()
        reader.join(timeout)
        line = found[0].decode("utf-8", "replace").split() if found else []
        if not line or line[0] != READY_MARK:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)
            why = proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
            _end(proc)
            detail = why[-1] if why else (f"no answer in {timeout:.0f} s" if not found
                                          else f"it said {' '.join(line)[:120]!r}")
            raise SSHError(f"the ssh master to the bastion did not start: {detail}")
        deadline = time.monotonic() + timeout
        while not control.exists():  # ssh binds the socket before it runs the session
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SSHError("the ssh master to the bastion gave no control socket")
            time.sleep(0.01)
        try:
            return line[1], int(line[2])
        except (IndexError, ValueError):
            return "", 0  # a shell that hides SSH_CONNECTION: the session count can't skip it

    @property
    def alive(self) -> bool:
        return not self._closed and self._proc.poll() is None

    @property
    def pid(self) -> int:
        return self._proc.pid

    def why_dead(self) -> str:
        code = self._proc.poll()
        said = self._stderr[-1] if self._stderr else ""
        return f"ssh exited with {code}" + (f": {said}" if said else "")

    def stdio_forward(self, host: str, port: int, fd_in: int, fd_out: int,
                      timeout: float = 30.0) -> MuxStream:
        """Have the master connect to host:port (as the bastion resolves it) and carry the
        stream between those descriptors and it. Blocks until the bastion confirms the
        channel; raises SSHError when it cannot be opened (the descriptors stay ours)."""
        where = f"{host}:{port}"
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        control.settimeout(timeout)
        try:
            _connect_unix(control, str(self.control_path), timeout)
            self._request(control, host, port, fd_in, fd_out)
            kind, _ = _read_message(control)
            if kind != HELLO:
                raise EOFError(f"the ssh master answered {kind:#x} to hello")
            kind, body = _read_message(control)
        except (OSError, EOFError) as exc:
            control.close()
            raise self._carry_error(where, exc) from None
        if kind == S_SESSION_OPENED:
            control.settimeout(None)
            return MuxStream(control, where, opened=True)
        control.close()
        raise refusal(where, kind, body)

    def begin_stdio_forward(self, host: str, port: int, fd_in: int, fd_out: int) -> MuxStream:
        """`stdio_forward` without waiting: the request and descriptors are sent, the master's
        answer is read by whoever watches the stream (muxwatch.py). Never blocks: BlockingIOError
        when the master's control socket is full (then wait with `stdio_forward`)."""
        where = f"{host}:{port}"
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        control.setblocking(False)
        try:
            control.connect(str(self.control_path))
            control.settimeout(1.0)  # a fresh unix socket takes these few bytes at once
            self._request(control, host, port, fd_in, fd_out)
            control.setblocking(False)
        except BlockingIOError:
            control.close()
            raise
        except OSError as exc:
            control.close()
            raise self._carry_error(where, exc) from None
        return MuxStream(control, where, opened=False)

    @staticmethod
    def _request(control: socket.socket, host: str, port: int, fd_in: int, fd_out: int) -> None:
        request = _message(NEW_STDIO_FWD, struct.pack(">I", 1) + _string(b"")
                           + _string(host.encode()) + struct.pack(">I", port))
        control.sendall(_message(HELLO, struct.pack(">I", MUX_VERSION)) + request)
        socket.send_fds(control, [b"\0"], [fd_in])
        socket.send_fds(control, [b"\0"], [fd_out])

    def _carry_error(self, where: str, exc: BaseException) -> SSHError:
        state = "" if self.alive else f" ({self.why_dead()})"
        return SSHError(f"the ssh master could not carry a connection to {where}: "
                        f"{exc or type(exc).__name__}{state}")

    def close(self) -> None:
        """End the master and the streams it carries. Idempotent."""
        if self._closed:
            return
        self._closed = True
        _end(self._proc)
        shutil.rmtree(self._workdir, ignore_errors=True)
        log.info("%s ssh master (pid %d) closed", self._context, self._proc.pid)

    def _drain_stderr(self) -> None:
        stream = self._proc.stderr
        if stream is None:
            return
        for raw in stream:
            line = raw.decode("utf-8", "replace").strip()
            if line:
                self._stderr = [*self._stderr[-4:], line]
                log.warning("%s ssh master: %s", self._context, line)


def _connect_unix(sock: socket.socket, path: str, timeout: float) -> None:
    """connect() that waits for room in the listener's backlog (ssh listens with 64): with a
    timeout set, Linux answers a full backlog with EAGAIN at once instead of waiting."""
    deadline, pause = time.monotonic() + timeout, 0.001
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the ssh master's control socket is full for {timeout:g} s"
                                   ) from None
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Close the session's stdin (cat ends: a clean exit), then terminate if it lingers."""
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=3)
    for stream in (proc.stdout, proc.stderr):
        with contextlib.suppress(OSError):
            if stream is not None:
                stream.close()
