"""What the lifecycle hears: requests, EC2's answers, the link, ticks."""

from __future__ import annotations

from dataclasses import dataclass

from bastion_tray.core.errors import BastionTrayError
from bastion_tray.core.lifecycle.state import Goal
from bastion_tray.core.ports import InstanceInfo


@dataclass(frozen=True)
class Demand:
    """A request wants the bastion up to `goal`; `waiter` is told when (or why not)."""

    waiter: int
    goal: Goal = Goal.LINK


@dataclass(frozen=True)
class GiveUp:
    """A waiter stopped waiting; the bring-up goes on for the others."""

    waiter: int


@dataclass(frozen=True)
class Tick:
    activity: int  # counted live by the service when it made the tick


@dataclass(frozen=True)
class Activity:
    count: int


@dataclass(frozen=True)
class Refresh:
    """Ask EC2 for the instance's state (start-up discovery)."""


@dataclass(frozen=True)
class Seen:
    call: int
    info: InstanceInfo


@dataclass(frozen=True)
class CallDone:
    call: int


@dataclass(frozen=True)
class CallFailed:
    call: int
    error: BastionTrayError


@dataclass(frozen=True)
class SshAnswered:
    attempt: int


@dataclass(frozen=True)
class SshFailed:
    attempt: int
    error: BastionTrayError


@dataclass(frozen=True)
class LinkUp:
    attempt: int


@dataclass(frozen=True)
class LinkFailed:
    attempt: int
    error: BastionTrayError


@dataclass(frozen=True)
class LinkLost:
    attempt: int
    reason: str


@dataclass(frozen=True)
class Keep:
    seconds: float


@dataclass(frozen=True)
class StopRequested:
    waiter: int
    reason: str
    close_listeners: bool = True
    force: bool = False  # stop even while others use the bastion


@dataclass(frozen=True)
class LeaseDone:
    """A PutLease or DeleteLease came back (error None: it worked)."""

    call: int
    error: BastionTrayError | None = None


@dataclass(frozen=True)
class BackstopDone:
    """A PushBackstop (fires_at: when it fires now) or DeleteBackstop came back."""

    call: int
    fires_at: float | None = None
    error: BastionTrayError | None = None


@dataclass(frozen=True)
class IngressDone:
    """A GrantIngress (address: the /32 opened; covered_by: whose rule already opens it) or a
    RevokeIngress came back (error None: it worked)."""

    call: int
    address: str | None = None
    covered_by: str | None = None
    error: BastionTrayError | None = None


@dataclass(frozen=True)
class SessionsCounted:
    """Others' SSH connections on the bastion (ours subtracted); None with the error."""

    check: int
    others: int | None
    error: BastionTrayError | None = None


@dataclass(frozen=True)
class Exit:
    """The daemon is exiting: stop what it started (auto_stop on), then nothing starts."""

    waiter: int


@dataclass(frozen=True)
class ForwardListening:
    name: str
    listening: bool


@dataclass(frozen=True)
class ClearError:
    """The user fixed what failed (trusted the host key)."""


Event = (Demand | GiveUp | Tick | Activity | Refresh | Seen | CallDone | CallFailed
         | SshAnswered | SshFailed | LinkUp | LinkFailed | LinkLost | Keep | StopRequested
         | Exit | ForwardListening | ClearError | LeaseDone | BackstopDone | SessionsCounted
         | IngressDone)
