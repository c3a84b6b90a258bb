"""The one place that builds the real adapters (boto3, paramiko) for the daemon."""

from __future__ import annotations

import base64
import contextlib
import socket
import sys
from collections.abc import Callable
from typing import Any

from bastion_tray.core.config import BastionConfig, Config, ForwardConfig, Settings
from bastion_tray.core.errors import PassphraseNeeded
from bastion_tray.core.paths import AppPaths
from bastion_tray.core.ports import Channel
from bastion_tray.service.links import Adapters, BastionLink, Listener, Pipe


def skip_unused_imports() -> None:
    """Keep paramiko from importing `invoke` (~15 MB of RSS in a daemon that idles all day).

    paramiko needs invoke only for `Match exec` in an ssh_config, which bastion-tray never
    parses; without it paramiko records the ImportError and goes on.
    """
    if "invoke" not in sys.modules and "paramiko" not in sys.modules:
        sys.modules["invoke"] = None  # type: ignore[assignment]


def real_adapters(config: Config, paths: AppPaths) -> Adapters:
    skip_unused_imports()
    import paramiko

    from bastion_tray.adapters import hostkeys, readiness
    from bastion_tray.adapters.cloud import Ec2Cloud
    from bastion_tray.adapters.forward import Forward
    from bastion_tray.adapters.relay import Relay
    from bastion_tray.adapters.ssh import BastionConnection

    relay = Relay(name="relay")
    secrets: dict[str, str] = {}  # identity file → passphrase, in this process's memory only

    def store(pin: str | None) -> hostkeys.HostKeyStore:
        return hostkeys.HostKeyStore(paths.known_hosts, pin=pin)

    def connect(host: str, port: int, bastion: BastionConfig, profile: str, settings: Settings,
                on_lost: Callable[[str], None]) -> BastionLink:
        try:
            return BastionConnection.open(
                host, port, bastion, hostkeys=store(bastion.host_key), profile=profile,
                keepalive_interval=settings.keepalive_interval,
                passphrase=lambda path: secrets.get(str(path)), on_lost=on_lost)
        except PassphraseNeeded as exc:
            if exc.wrong:
                secrets.pop(exc.path, None)
            raise

    def remember(path: str, secret: str | None) -> None:
        if secret is None:
            secrets.pop(path, None)
        else:
            secrets[path] = secret

    def forward(cfg: ForwardConfig, connector: Callable[[tuple[str, int]], Channel],
                profile: str, on_change: Callable[[], None]) -> Listener:
        return Forward(cfg, connector, relay, profile=profile, on_change=on_change)

    def pipe(sock: Any, leftover: bytes, channel: Any, on_closed: Callable[[], None]) -> Pipe:
        if leftover:
            channel.sendall(leftover)
        return relay.add(sock, channel, lambda stats: on_closed())

    def dial(host: str, port: int) -> Any:
        sock = readiness.open_tcp(host, port, timeout=15)
        return SocketChannel(sock)

    def fetch(host: str, port: int) -> tuple[str, str]:
        key = hostkeys.fetch_host_key(host, port)
        return hostkeys.fingerprint(key), f"{key.get_name()} {key.get_base64()}"

    def record(host: str, port: int, line: str) -> str:
        kind, _, blob = line.partition(" ")
        key = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
        return str(store(None).record(host, port, key))

    return Adapters(
        cloud=lambda profile: Ec2Cloud(profile),
        wait_ssh=readiness.wait_until_ssh_answers,
        connect=connect,
        forward=forward,
        pipe=pipe,
        fetch_host_key=fetch,
        record_host_key=record,
        dial=dial,
        remember_passphrase=remember,
        close=relay.close,
    )


class SocketChannel:
    """A plain TCP socket dressed as a channel for the relay (`proxy @bastion`).

    It stays blocking: the relay only reads it when the selector says so, and what goes to the
    bastion's own sshd this way is an interactive SSH session, never a bulk stream.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        sock.settimeout(30)

    def fileno(self) -> int:
        return self._sock.fileno()

    def setblocking(self, flag: bool) -> None:
        return None

    def recv(self, size: int) -> bytes:
        return self._sock.recv(size)

    def send(self, data: bytes) -> int:
        self._sock.sendall(data)
        return len(data)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)

    def shutdown_write(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._sock.close()
