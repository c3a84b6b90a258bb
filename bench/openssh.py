"""Plain OpenSSH sessions to the sandbox's app server: through the ProxyCommand that
`bastion-tray ssh-config` prints (ours), or `ssh -J` through the bastion (OpenSSH alone).

Host keys come from known_hosts files the bench writes (StrictHostKeyChecking yes); HOME points
at a scratch directory, so nothing lands in the real ~/.ssh.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from bench.net import require_loopback

JUMP_ALIAS = "bench-appserver"


def jump_config(path: Path, sandbox: Any) -> Path:
    """An ssh_config for `ssh -J`: the bastion and the app server, keys from the sandbox's
    known_hosts (which lists both by address)."""
    common = (f"  User {sandbox.user}\n  IdentityFile {sandbox.client_key}\n"
              "  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking yes\n"
              f"  UserKnownHostsFile {sandbox.known_hosts}\n  GlobalKnownHostsFile /dev/null\n")
    path.write_text(
        f"Host bench-bastion\n  HostName {require_loopback(sandbox.eip)}\n"
        f"  Port {sandbox.bastion_port}\n{common}\n"
        f"Host {JUMP_ALIAS}\n  HostName {require_loopback(sandbox.appserver_host)}\n"
        f"  Port {sandbox.appserver_port}\n  ProxyJump bench-bastion\n{common}")
    return path


def _ssh(args: list[str], env: dict[str, str], timeout: float) -> None:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")


def session_s(config: Path, host: str, env: dict[str, str]) -> float:
    """Seconds for `ssh -F config host true`: every handshake, auth, a command, teardown."""
    started = time.perf_counter()
    _ssh(["ssh", "-F", str(config), "-o", "BatchMode=yes", host, "true"], env, 60)
    return time.perf_counter() - started


def scp_mb_s(config: Path, host: str, source: Path, dest: Path, env: dict[str, str]) -> float:
    """MB/s (10^6) of `scp source host:dest`, session setup included."""
    started = time.perf_counter()
    _ssh(["scp", "-q", "-F", str(config), "-o", "BatchMode=yes", str(source),
          f"{host}:{dest}"], env, 300)
    seconds = time.perf_counter() - started
    if dest.stat().st_size != source.stat().st_size:  # the app server is this machine
        raise RuntimeError(f"scp: {dest} has {dest.stat().st_size} bytes, not "
                           f"{source.stat().st_size}")
    dest.unlink()
    return source.stat().st_size / seconds / 1e6


def write_file(path: Path, mib: int) -> Path:
    import os

    with path.open("wb") as out:
        for _ in range(mib):
            out.write(os.urandom(1 << 20))
    return path
