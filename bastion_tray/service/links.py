"""What the daemon needs from the adapters, as named-method Protocols: the CLI builds the real
ones (cli/wiring.py), tests build fakes. Keeping these as shapes lets the service run with no
boto3/paramiko import of its own; there are no silent defaults — an adapter says what it does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from bastion_tray.core.config import BastionConfig, ForwardConfig, HostConfig, Profile, Settings
from bastion_tray.core.console_keys import ConsoleVerdict
from bastion_tray.core.ports import Backstop, Channel, Cloud, Ingress, Progress
from bastion_tray.core.trust import KeyTarget


class BastionLink(Protocol):
    """One SSH transport to the bastion."""

    @property
    def alive(self) -> bool: ...

    @property
    def data_plane(self) -> str:
        """What carries forwarded bytes now: "openssh" (an ssh master) or "paramiko"."""
        ...

    def open_channel(self, host: str, port: int,
                     origin: tuple[str, int] = ("127.0.0.1", 0)) -> Any: ...

    def stream(self, host: str, port: int, sock: Any,
               origin: tuple[str, int] = ("127.0.0.1", 0)) -> Any:
        """What a forward's accepted `sock` goes through: something that `adopt`s it (the ssh
        master carries it) or a channel for the relay."""
        ...

    def stream_now(self, host: str, port: int, sock: Any) -> Any:
        """`stream` without waiting, from the accept thread: something that adopts `sock`
        when the link's ssh master can take it at once, else None (then `stream`)."""
        ...

    def stdio(self, host: str, port: int, fd_in: int, fd_out: int) -> Any:
        """A `proxy` client's stdio carried by the ssh master (closed when it ends: `fileno()`
        turns readable); None when there is no master — then `open_channel` and a pipe."""
        ...

    def run(self, command: str, timeout: float) -> str:
        """Run a command on the bastion over this link; its stdout."""
        ...

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


class Adapters(Protocol):
    """Everything that touches the network, one method per job."""

    def cloud(self, profile: Profile) -> Cloud:
        """The EC2 side of a profile."""
        ...

    def backstop(self, profile: Profile) -> Backstop:
        """The EventBridge Scheduler side of a profile (its backstop schedule)."""
        ...

    def ingress(self, profile: Profile, settings: Settings) -> Ingress:
        """The profile's my-ip rule on its bastion's SSH security group."""
        ...

    def count_sessions(self, link: BastionLink) -> int:
        """Others' SSH connections established on the bastion, counted over `link` (its own
        connection subtracted)."""
        ...

    def wait_ssh(self, host: str, port: int, *, timeout: float,
                 progress: Progress | None = None) -> float:
        """Poll host:port until it sends an SSH banner; the seconds waited."""
        ...

    def connect(self, host: str, port: int, bastion: BastionConfig, profile: str,
                settings: Settings, on_lost: Callable[[str], None]) -> BastionLink:
        """An authenticated, host-key-checked link to the bastion."""
        ...

    def forward(self, cfg: ForwardConfig, connector: Callable[[tuple[str, int], Any], Channel],
                profile: str, on_change: Callable[[], None],
                fast: Callable[[tuple[str, int], Any], Any] | None = None) -> Listener:
        """A listener for one forward, not yet started; `fast` is tried on the accept thread
        before the connector (see BastionLink.stream_now)."""
        ...

    def pipe(self, sock: Any, leftover: bytes, channel: Any,
             on_closed: Callable[[], None]) -> Pipe:
        """Pump bytes both ways between a local socket and a channel."""
        ...

    def watch_stdio(self, stream: Any, client: Any, on_closed: Callable[[], None]) -> Pipe:
        """Wait for a `proxy` stream the ssh master carries to end (or its `client`, the
        control connection, to go away); then close both and call `on_closed`."""
        ...

    def dial(self, host: str, port: int) -> Any:
        """A plain TCP stream to host:port, relay-ready (for `proxy @bastion`)."""
        ...

    def fetch_host_key(self, host: str, port: int, via: Any = None) -> tuple[str, str]:
        """(fingerprint, key line) of the server's host key; `via`: a stream already open to
        it (a channel through the bastion), else a TCP connection of its own."""
        ...

    def host_key_status(self, target: KeyTarget, line: str,
                        pin: str | None) -> tuple[str, list[str], bool]:
        """How the app's stores judge `line` for `target`: (trusted | unknown | changed |
        revoked, the known fingerprints that conflict with it, whether the app's known_hosts
        holds it under the alias — what OpenSSH clients need)."""
        ...

    def record_host_key(self, target: KeyTarget, line: str) -> str:
        """Record a confirmed key under `target.alias` in the app's known_hosts; the file's
        path. A key that conflicts with a known one raises HostKeyError (both fingerprints)."""
        ...

    def console_verdict(self, profile: str, fingerprint: str,
                        instance_id: str | None = None) -> ConsoleVerdict:
        """What the console output of the profile's bastion (or of `instance_id`) says of a
        presented host key: verified, mismatch, or unavailable with the reason. Never raises."""
        ...

    def remember_passphrase(self, path: str, secret: str | None) -> None:
        """Keep an identity file's passphrase in memory (None forgets it)."""
        ...

    def lend_key(self, profile: Profile, host: HostConfig) -> Any:
        """identity = "ec2-instance-connect" on `host`: a fresh key pushed to its instance, served
        by a private agent (`.path`, its socket; `close()`), never written to disk."""
        ...

    def close(self) -> None:
        """Stop the shared relay engine and whatever else the adapters hold."""
        ...
