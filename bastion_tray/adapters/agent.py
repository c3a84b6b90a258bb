"""A private SSH agent that holds one key, for the daemon's own `ssh` master (and, for
ec2-instance-connect, the system ssh of `shell` and of the generated ssh config).

The key stays in the daemon's memory (loaded with a passphrase the user typed, or a key of the
user's own ssh-agent, which signs through it): no file is written, nothing else is offered. The
socket lives in a 0700 directory of its own and is 0600, and only the master is told its path.
Requests it answers (draft-miller-ssh-agent): REQUEST_IDENTITIES and SIGN_REQUEST; anything else
gets SSH_AGENT_FAILURE.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FAILURE, REQUEST_IDENTITIES, IDENTITIES_ANSWER = 5, 11, 12
SIGN_REQUEST, SIGN_RESPONSE = 13, 14
RSA_SHA2_256, RSA_SHA2_512 = 2, 4
MAX_REQUEST = 256 * 1024


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _take_string(data: bytes, at: int) -> tuple[bytes, int]:
    (size,) = struct.unpack_from(">I", data, at)
    end = at + 4 + size
    if end > len(data):
        raise ValueError("truncated string")
    return data[at + 4:end], end


class PrivateAgent:
    """Serves `key` (a paramiko PKey or AgentKey) on a private socket until `close()`.

    `path`: a socket path of the caller's (in a 0700 directory of its own), for an agent that
    clients find by name; default a fresh 0700 temporary directory. A subclass may offer keys
    made on demand (`_offer`, `_signer`).
    """

    def __init__(self, key: Any, comment: str = "bastion-tray", *,
                 path: Path | None = None) -> None:
        self._key, self._comment = key, comment.encode()
        self._blob = key.asbytes() if key is not None else b""
        self._dir: Path | None = None
        if path is None:
            self._dir = Path(tempfile.mkdtemp(prefix="bt-agent-"))
            path = self._dir / "agent.sock"
        else:
            _clear_stale(path)
        self.path = path
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self._listener.bind(str(self.path))
        except OSError:
            self._listener.close()
            raise
        finally:
            os.umask(old)
        self.path.chmod(0o600)
        self._listener.listen(8)
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="private-agent").start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def _offer(self) -> list[tuple[Any, bytes]]:
        """The keys to list now: (key, public blob)."""
        return [(self._key, self._blob)]

    def _signer(self, blob: bytes) -> Any | None:
        """The key that signs for `blob`, if this agent offered it."""
        return self._key if blob == self._blob else None

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True,
                             name="private-agent-conn").start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                while True:
                    head = _recv_exact(conn, 4)
                    if head is None:
                        return
                    (size,) = struct.unpack(">I", head)
                    if not 1 <= size <= MAX_REQUEST:
                        return
                    request = _recv_exact(conn, size)
                    if request is None:
                        return
                    reply = self._answer(request)
                    conn.sendall(struct.pack(">I", len(reply)) + reply)
            except OSError:
                return

    def _answer(self, request: bytes) -> bytes:
        kind = request[0]
        if kind == REQUEST_IDENTITIES:
            offered = self._offer()
            return (bytes([IDENTITIES_ANSWER]) + struct.pack(">I", len(offered))
                    + b"".join(_string(blob) + _string(self._comment) for _, blob in offered))
        if kind == SIGN_REQUEST:
            try:
                blob, at = _take_string(request, 1)
                data, at = _take_string(request, at)
                (flags,) = struct.unpack_from(">I", request, at) if at + 4 <= len(request) \
                    else (0,)
                key = self._signer(blob)
                if key is None:
                    return bytes([FAILURE])
                algorithm = ("rsa-sha2-512" if flags & RSA_SHA2_512 else
                             "rsa-sha2-256" if flags & RSA_SHA2_256 else None)
                if algorithm is not None and key.get_name() == "ssh-rsa":
                    signature = key.sign_ssh_data(data, algorithm)
                else:
                    signature = key.sign_ssh_data(data)
                return bytes([SIGN_RESPONSE]) + _string(signature.asbytes())
            except Exception as exc:  # a malformed request or a key that can't sign
                log.warning("private agent: a signature failed: %s", type(exc).__name__)
                return bytes([FAILURE])
        return bytes([FAILURE])


def _clear_stale(path: Path) -> None:
    """Remove a socket left by a daemon that died; a live one (something answers) stays, and
    the bind then fails: that agent is someone else's to serve."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
    finally:
        probe.close()


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = conn.recv(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
