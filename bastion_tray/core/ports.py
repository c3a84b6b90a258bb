"""The small interfaces through which the core speaks to the world.

Adapters implement them (boto3 in adapters/cloud.py, paramiko in adapters/ssh.py); the core and
its tests only see these shapes, so fakes can stand in for the pure parts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class InstanceInfo:
    """What EC2 says about the bastion right now."""

    instance_id: str
    state: str  # EC2's: pending, running, stopping, stopped, shutting-down, terminated
    name: str | None = None  # the Name tag
    public_ip: str | None = None
    elastic_ip: str | None = None

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
