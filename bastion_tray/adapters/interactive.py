"""An SSH session to a private host for machines with no `ssh` binary (paramiko, over a pipe).

The pipe is the daemon's `proxy` stream to HOST:PORT through the bastion, so the bastion's
credentials never leave the daemon and the host's own key is checked like OpenSSH would:
against the app's known_hosts and ~/.ssh/known_hosts, refusing unknown or changed keys.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import socket
import sys
from pathlib import Path

import paramiko

from bastion_tray.adapters import ssh
from bastion_tray.adapters.hostkeys import HostKeyStore, negotiate
from bastion_tray.core.config import HostConfig
from bastion_tray.core.trust import private_target

log = logging.getLogger("bastion_tray.shell")


def _ask_passphrase(path: Path) -> str | None:
    if not sys.stdin.isatty():
        return None
    import getpass

    return getpass.getpass(f"Passphrase for {path}: ")


def open_session(pipe: socket.socket, host: HostConfig, known_hosts: Path,
                 profile: str) -> paramiko.Transport:
    """Authenticate to `host` over `pipe`, its key verified first; returns the transport."""
    transport = paramiko.Transport(pipe)
    try:
        key = negotiate(transport, host.hostname, host.port, timeout=30)
        # trusted under foo-appserver, never by its address alone
        target = private_target(profile, host.name, host.hostname, host.port)
        HostKeyStore(known_hosts).verify(target, key)
        where = f"{host.hostname}:{host.port}"
        logger = ssh.LogContext(profile, host.hostname, host.port)
        ssh.authenticate(transport, host, where, _ask_passphrase,  # type: ignore[arg-type]
                         profile, logger)
    except BaseException:
        transport.close()
        raise
    return transport


def _pump(channel: paramiko.Channel, interactive: bool) -> None:
    in_fd, out_fd = sys.stdin.fileno(), sys.stdout.fileno()
    watch = [channel, in_fd]
    while True:
        ready, _, _ = select.select(watch, [], [])
        if channel in ready:
            data = channel.recv(65536)
            if not data:
                return
            os.write(out_fd, data)
        if channel.recv_stderr_ready():
            os.write(sys.stderr.fileno(), channel.recv_stderr(65536))
        if in_fd in ready:
            data = os.read(in_fd, 4096)
            if not data:
                if not interactive:
                    channel.shutdown_write()
                watch = [channel]
                continue
            channel.sendall(data)


def run_session(transport: paramiko.Transport, command: list[str]) -> int:
    """A login shell with a pty (or `command`), wired to this terminal; returns its status."""
    channel = transport.open_session()
    interactive = not command and sys.stdin.isatty()
    if interactive:
        size = shutil.get_terminal_size()
        channel.get_pty(term=os.environ.get("TERM", "xterm"), width=size.columns,
                        height=size.lines)
        channel.invoke_shell()
    else:
        channel.exec_command(" ".join(command) if command else "exec $SHELL -l")
    saved = None
    if interactive:
        import signal
        import termios
        import tty

        def follow_resize(signum: int, frame: object) -> None:
            size = shutil.get_terminal_size()
            with contextlib.suppress(Exception):
                channel.resize_pty(width=size.columns, height=size.lines)

        signal.signal(signal.SIGWINCH, follow_resize)  # the remote shell follows the window
        saved = termios.tcgetattr(sys.stdin.fileno())
        tty.setraw(sys.stdin.fileno())
    try:
        _pump(channel, interactive)
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
    status = channel.recv_exit_status()
    with contextlib.suppress(Exception):
        channel.close()
    return status

