"""`bastion-tray proxy PROFILE HOST PORT`: stdio ⇄ HOST:PORT through the bastion (a ProxyCommand).

HOST `@bastion` means the bastion's own SSH port, so `ssh foo-bastion` also starts it on demand.
Progress goes to stderr; stdout carries only the raw bytes.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading

from bastion_tray.cli import session
from bastion_tray.core.errors import UsageError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("proxy", help="stdio ⇄ HOST:PORT through the bastion (for ProxyCommand)")
    p.add_argument("profile")
    p.add_argument("host", help="an address as the bastion sees it, a configured host name, "
                                "or @bastion")
    p.add_argument("port", type=int)
    p.set_defaults(run=run)


def pump_stdio(sock: socket.socket, leftover: bytes) -> None:
    """Copy stdin → sock and sock → stdout until the remote side closes."""
    out_fd, in_fd = sys.stdout.fileno(), sys.stdin.fileno()
    if leftover:
        os.write(out_fd, leftover)

    def upstream() -> None:
        try:
            while data := os.read(in_fd, 65536):
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=upstream, name="stdin-to-socket", daemon=True).start()
    try:
        while data := sock.recv(262144):
            view = memoryview(data)
            while view:
                view = view[os.write(out_fd, view):]
    except OSError:
        pass
    finally:
        sock.close()


def run(args: argparse.Namespace) -> int:
    config = session.load(args)
    profile = session.profile_arg(config, args.profile)
    host = args.host
    if host in profile.hosts:
        host = profile.hosts[host].hostname
    if not 1 <= args.port <= 65535:
        raise UsageError(f"port must be 1–65535, got {args.port}")
    progress = session.ProgressPrinter()
    client = session.connect(config)
    stdio = (sys.stdin.fileno(), sys.stdout.fileno())
    sock, leftover, handed = client.open_proxy(profile=profile.name, host=host, port=args.port,
                                               on_event=progress, stdio=stdio)
    progress.done()
    if handed:
        wait_handed(sock, stdio)
    else:
        pump_stdio(sock, leftover)
    return 0


def wait_handed(sock: socket.socket, stdio: tuple[int, int]) -> None:
    """The daemon's ssh master carries our stdin/stdout now: let go of them (so ssh sees EOF
    when the master closes them) and stay until the daemon says the stream ended — ssh treats
    the ProxyCommand's exit as the end of the connection."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in stdio:
        os.dup2(null, fd)
    os.close(null)
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass
    finally:
        sock.close()
