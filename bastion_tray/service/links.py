"""What the daemon needs from the adapters, as shapes: the CLI builds the real ones.

Keeping these as Protocols lets the daemon run with no boto3/paramiko import of its own, and
keeps the wiring (which adapter backs which port) in one place, `cli/wiring.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bastion_tray.core.config import BastionConfig, ForwardConfig, Profile, Settings
from bastion_tray.core.ports import Channel, Cloud


class BastionLink(Protocol):
    """One SSH transport to the bastion."""

    @property
    def alive(self) -> bool: ...

    def open_channel(self, host: str, port: int,
                     origin: tuple[str, int] = ("127.0.0.1", 0)) -> Any: ...

    def close(self) -> None: ...


class Listener(Protocol):
    """One `-L` forward's listening socket and its connections."""

    @property
    def local_port(self) -> int: ...

    @property
    def listening(self) -> bool: ...

    @property
    def active_connections(self) -> int: ...

    @property
    def total_connections(self) -> int: ...

    @property
    def bytes_up(self) -> int: ...

    @property
    def bytes_down(self) -> int: ...

    def start(self) -> None: ...

    def close_connections(self) -> None: ...

    def close(self) -> None: ...


class Pipe(Protocol):
    """A raw relay between a local socket and a channel (for `proxy`)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Adapters:
    """Factories for everything that touches the network. The CLI fills them in."""

    #: the EC2 side of a profile
    cloud: Callable[[Profile], Cloud]
    #: poll host:port until it sends an SSH banner; returns seconds waited
    wait_ssh: Callable[..., float]
    #: (host, port, bastion, profile_name, settings, on_lost) -> an authenticated link
    connect: Callable[[str, int, BastionConfig, str, Settings, Callable[[str], None]], BastionLink]
    #: (forward, connector, profile_name, on_change) -> a listener, not yet started
    forward: Callable[[ForwardConfig, Callable[[tuple[str, int]], Channel], str,
                       Callable[[], None]], Listener]
    #: (socket, leftover bytes, channel, on_closed) -> a pipe pumping both ways
    pipe: Callable[[Any, bytes, Any, Callable[[], None]], Pipe]
    #: (host, port) -> (fingerprint, key line) of the server's host key
    fetch_host_key: Callable[[str, int], tuple[str, str]]
    #: (host, port, key line) -> path of the known_hosts file written
    record_host_key: Callable[[str, int, str], str]
    #: (host, port) -> a plain TCP stream, relay-ready (for `proxy @bastion`)
    dial: Callable[[str, int], Any] = lambda host, port: None
    #: (identity file path, passphrase or None to forget it): kept in memory only
    remember_passphrase: Callable[[str, str | None], None] = lambda path, secret: None
    #: stops the shared relay engine and whatever else the adapters hold
    close: Callable[[], None] = lambda: None

