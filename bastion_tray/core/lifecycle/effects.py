"""What the lifecycle asks the service to do, in order."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bastion_tray.core.errors import BastionTrayError
from bastion_tray.core.lifecycle.state import Lifecycle, Persisted


@dataclass(frozen=True)
class CallCloud:
    call: int
    op: str  # "describe", "start", "stop"


@dataclass(frozen=True)
class WaitSsh:
    attempt: int
    host: str
    port: int
    timeout: float


@dataclass(frozen=True)
class OpenLink:
    attempt: int
    host: str
    port: int


@dataclass(frozen=True)
class KeepLink:
    """The link of `attempt` is the profile's link now."""

    attempt: int


@dataclass(frozen=True)
class DropLink:
    """A link that came too late (its bring-up was abandoned): close it."""

    attempt: int


@dataclass(frozen=True)
class CloseLink:
    pass


@dataclass(frozen=True)
class CloseConnections:
    listeners: bool  # also close the listening sockets


@dataclass(frozen=True)
class Resolve:
    """Wake `waiters`: reached (host) or failed (error)."""

    waiters: tuple[int, ...]
    host: str | None = None
    error: BastionTrayError | None = None


@dataclass(frozen=True)
class StopFinished:
    waiters: tuple[int, ...]
    state: str
    error: BastionTrayError | None = None


@dataclass(frozen=True)
class PutLease:
    """Write our lease tag with this expiry (epoch seconds)."""

    call: int
    until: float


@dataclass(frozen=True)
class DeleteLease:
    call: int


@dataclass(frozen=True)
class PushBackstop:
    """Make the instance's backstop schedule fire no earlier than `at`."""

    call: int
    instance_id: str
    at: float


@dataclass(frozen=True)
class DeleteBackstop:
    call: int
    instance_id: str


@dataclass(frozen=True)
class GrantIngress:
    """Open the bastion's SSH port to this machine's public address (ingress = "my-ip"):
    learn the address, add or renew our /32 rule until `until`, revoke ours for any other
    address, reap anyone's expired bastion-tray rules."""

    call: int
    until: float


@dataclass(frozen=True)
class RevokeIngress:
    """Revoke our rules (only ours: a teammate's stay)."""

    call: int


@dataclass(frozen=True)
class CountSessions:
    """Count others' SSH connections on the bastion: over the link when it is up, else over a
    connection of its own that closes right after."""

    check: int


@dataclass(frozen=True)
class Save:
    record: Persisted


@dataclass(frozen=True)
class Publish:
    type: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Log:
    level: str  # "info", "warning"
    message: str


Effect = (CallCloud | WaitSsh | OpenLink | KeepLink | DropLink | CloseLink | CloseConnections
          | Resolve | StopFinished | Save | Publish | Log | PutLease | DeleteLease | PushBackstop
          | DeleteBackstop | CountSessions | GrantIngress | RevokeIngress)


Result = tuple[Lifecycle, list[Effect]]
