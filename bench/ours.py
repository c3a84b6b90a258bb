"""The "ours" side of the bench: bastion-tray's Forward + Relay over one paramiko transport.

Runs as its own process, as the daemon will (`python -m bench.ours …`), one Forward per
`--target`, and prints "READY <port> <port>…" once they listen; it exits when its stdin closes.
The transport is tuned as adapters/ssh.py tunes the daemon's (2 MiB window, 32 KiB packets,
TCP_NODELAY, no compression), with the cipher pinned so both contenders use the same one.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import paramiko

from bastion_tray.adapters.forward import Forward
from bastion_tray.adapters.relay import Relay
from bastion_tray.core.config import ForwardConfig
from bench.net import raise_fd_limit, require_loopback

#: per-channel receive window: 2 MiB measured best against OpenSSH (128 MiB made sshd thrash)
WINDOW_SIZE = 2 << 20
#: the largest packet sshd may send us; 64 KiB and more measured no faster
MAX_PACKET_SIZE = 32768


def open_transport(host: str, port: int, user: str, key_file: Path, known_hosts: Path,
                   cipher: str, *, window: int = WINDOW_SIZE,
                   max_packet: int = MAX_PACKET_SIZE) -> paramiko.Transport:
    """An authenticated transport to the bastion; its host key must match `known_hosts`."""
    name = require_loopback(host) if port == 22 else f"[{require_loopback(host)}]:{port}"
    known = paramiko.HostKeys(str(known_hosts)).lookup(name)
    if not known:
        raise SystemExit(f"bench: no host key for {name} in {known_hosts}")
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock, default_window_size=window,
                                   default_max_packet_size=max_packet)
    transport.get_security_options().ciphers = (cipher,)
    transport.use_compression(False)
    transport.start_client(timeout=10)
    offered = transport.get_remote_server_key()
    if known.get(offered.get_name()) != offered:  # RejectPolicy: unknown or changed → refuse
        transport.close()
        raise SystemExit(f"bench: the host key of {name} does not match {known_hosts}")
    transport.auth_publickey(user, paramiko.PKey.from_path(key_file))
    return transport


def _connector(transport: paramiko.Transport,
               target: tuple[str, int]) -> Callable[[tuple[str, int]], paramiko.Channel]:
    def connect(origin: tuple[str, int]) -> paramiko.Channel:
        return transport.open_channel("direct-tcpip", target, origin)
    return connect


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--host", "--user", "--key", "--known-hosts", "--cipher"):
        parser.add_argument(name, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", action="append", required=True, help="HOST:PORT")
    parser.add_argument("--window", type=int, default=WINDOW_SIZE, help="for tuning runs")
    parser.add_argument("--max-packet", type=int, default=MAX_PACKET_SIZE, help="ditto")
    parser.add_argument("--no-tune-malloc", action="store_true", help="ditto")
    args = parser.parse_args()
    raise_fd_limit()
    transport = open_transport(args.host, args.port, args.user, Path(args.key),
                               Path(args.known_hosts), args.cipher, window=args.window,
                               max_packet=args.max_packet)
    with contextlib.ExitStack() as stack:
        stack.callback(transport.close)
        relay = stack.enter_context(Relay(tune_malloc=not args.no_tune_malloc))
        ports = []
        for index, spec in enumerate(args.target):
            host, _, port = spec.rpartition(":")
            target = (require_loopback(host), int(port))
            config = ForwardConfig(f"t{index}", 0, host, int(port))
            forward = Forward(config, _connector(transport, target), relay, profile="bench")
            ports.append(stack.enter_context(forward).local_port)
        print(f"READY {transport.remote_cipher} {transport.remote_mac} "
              + " ".join(map(str, ports)), flush=True)
        sys.stdin.read()  # until the bench closes our stdin


if __name__ == "__main__":
    main()
