"""OpenSSH's contender, `ssh -N -L`: a context manager yielding a `Side` — the local ports of
its forwards (one per target, in order), what it negotiated and the ssh process's pid.
("ours" is the real daemon: bench/app.py.)
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.net import require_loopback, stop

LOCAL = "127.0.0.1"


@dataclass(frozen=True)
class Bastion:
    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path


@dataclass(frozen=True)
class Side:
    ports: list[int]
    cipher: str
    mac: str  # "" for AEAD ciphers
    pid: int  # the ssh client: its CPU is the tunnel's


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCAL, 0))
        return int(sock.getsockname()[1])


def _wait_listening(proc: subprocess.Popen[bytes], ports: Sequence[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ssh -L exited with {proc.returncode}")
            with contextlib.suppress(OSError):
                socket.create_connection((LOCAL, port), timeout=1).close()
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"ssh -L: nothing listens on {LOCAL}:{port}")
            time.sleep(0.05)


def _ssh_negotiated(log: str) -> tuple[str, str]:
    """cipher and MAC from `ssh -v`'s "kex: server->client cipher: X MAC: Y" line."""
    found = re.search(r"server->client cipher: (\S+) MAC: (\S+)", log)
    if not found:
        return "?", "?"
    return found[1], "" if found[2] == "<implicit>" else found[2]


@contextlib.contextmanager
def ssh_forward(bastion: Bastion, cipher: str,
                targets: Sequence[tuple[str, int]], logdir: Path) -> Iterator[Side]:
    """OpenSSH `ssh -N -L …`, one -L per target."""
    ports = [_free_port() for _ in targets]
    forwards = []
    for port, (host, target_port) in zip(ports, targets, strict=True):
        forwards += ["-L", f"{LOCAL}:{port}:{require_loopback(host)}:{target_port}"]
    log = logdir / "ssh-L.log"
    args = ["ssh", "-v", "-N", "-F", "/dev/null", "-i", str(bastion.key),
            "-o", "IdentitiesOnly=yes", "-o", f"Ciphers={cipher}",
            "-o", f"UserKnownHostsFile={bastion.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "Compression=no",
            "-p", str(bastion.port), *forwards,
            f"{bastion.user}@{require_loopback(bastion.host)}"]
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)
    try:
        _wait_listening(proc, ports, 15)
        yield Side(ports, *_ssh_negotiated(log.read_text(errors="replace")), proc.pid)
    finally:
        stop(proc)
