"""The small interfaces through which the core speaks to the world.

Adapters implement them (boto3 in adapters/cloud.py, paramiko in adapters/ssh.py); the core and
its tests only see these shapes, so fakes can stand in for the pure parts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class InstanceInfo:
    """What EC2 says about the bastion right now."""

    instance_id: str
    state: str  # EC2's: pending, running, stopping, stopped, shutting-down, terminated
    name: str | None = None  # the Name tag
    public_ip: str | None = None
    elastic_ip: str | None = None
    #: every `bastion-tray:lease:<user_id>` tag on the instance, as (user_id, raw value),
    #: sorted by user id; core/team.py reads the values
    leases: tuple[tuple[str, str], ...] = ()
    instance_type: str | None = None  # "t3.micro": what `cost` prices the running hours by

    @property
    def address(self) -> str | None:
        """host = "auto": the Elastic IP, else the public IP."""
        return self.elastic_ip or self.public_ip


class Cloud(Protocol):
    """One profile's bastion instance in EC2."""

    @property
    def endpoint(self) -> str:
        """Where the EC2 calls go (a URL), for messages about an endpoint that does not answer."""
        ...

    def describe(self) -> InstanceInfo:
        """The bastion's current state (found by instance_id or by its Name tag)."""
        ...

    def start(self) -> None:
        """StartInstances. Raises CloudError (IncorrectInstanceState while stopping, …)."""
        ...

    def stop(self) -> None:
        """StopInstances."""
        ...

    def put_lease(self, user_id: str, until: float) -> None:
        """CreateTags `bastion-tray:lease:<user_id>` = iso_utc(until) on the bastion (and only
        there). Raises CloudError (AccessDenied names the missing ec2:CreateTags)."""
        ...

    def delete_lease(self, user_id: str) -> None:
        """DeleteTags of that one key; a tag that is not there is fine."""
        ...


class Backstop(Protocol):
    """EventBridge Scheduler's one-time schedule that stops one bastion (DESIGN.md "Teams")."""

    def push(self, instance_id: str, at: float) -> float:
        """Make `bastion-tray-<instance_id>` fire at max(its time now, `at`) (epoch seconds),
        creating it when absent; returns when it fires. Raises CloudError."""
        ...

    def delete(self, instance_id: str) -> None:
        """Delete that schedule; one that is not there is fine. Raises CloudError."""
        ...


class Ingress(Protocol):
    """ingress = "my-ip": our /32 rule on the bastion's SSH security group (DESIGN.md
    "Access")."""

    def grant(self, instance_id: str, until: float) -> Any:
        """Learn this machine's public address; add or renew our rule until `until`; revoke
        ours for other addresses; reap expired bastion-tray rules. Returns what is open now
        (`.address`, `.covered_by`). Raises CloudError."""
        ...

    def release(self, instance_id: str | None) -> None:
        """Revoke our rules (a teammate's stay). Raises CloudError."""
        ...


class Channel(Protocol):
    """A byte stream through the bastion (a paramiko Channel satisfies it)."""

    def send(self, data: bytes) -> int: ...
    def recv(self, size: int) -> bytes: ...
    def close(self) -> None: ...
    def fileno(self) -> int: ...


class Clock(Protocol):
    def __call__(self) -> float:
        """Wall-clock seconds (time.time): keeps counting across laptop sleep."""
        ...


#: reports a phase of a long wait: ("starting instance", "pending, 12 s") and so on
Progress = Callable[[str, str], None]
