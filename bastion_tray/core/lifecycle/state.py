"""The lifecycle's state value: what one profile is doing, as one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum, IntEnum

from bastion_tray.core.durations import KEEP_LIMIT
from bastion_tray.core.errors import BastionTrayError
from bastion_tray.core.idle import IdleClock, IdlePolicy
from bastion_tray.core.ports import InstanceInfo

GONE = frozenset({"shutting-down", "terminated"})
KEEP_MAX = KEEP_LIMIT  # "keep running" never postpones the stop further than this


@dataclass(frozen=True)
class Timings:
    """Every wait of the lifecycle, in seconds."""

    poll: float = 1.0  # between DescribeInstances while an instance starts or stops
    refresh: float = 30.0  # describe a bastion that is not stopped this often (outside stops)
    ready_timeout: float = 300.0  # a bring-up (start, SSH answering, link up) gives up after this
    backoff_first: float = 1.0  # first reconnect after a lost link
    backoff_max: float = 30.0  # reconnect delays double up to this
    api_slow: float = 5.0  # an EC2 call silent this long: say "still waiting for the EC2 API"
    api_give_up: float = 30.0  # an EC2 call silent this long has failed


@dataclass(frozen=True)
class Setup:
    """What a profile's lifecycle needs to know of its config; fixed for the daemon's life."""

    profile: str
    port: int  # the bastion's SSH port
    fixed_host: str | None  # the configured host, None for host = "auto" (look it up each start)
    policy: IdlePolicy
    timings: Timings = field(default_factory=Timings)
    endpoint: str = "the EC2 API"  # where EC2 calls go, for messages about a hanging endpoint


class Phase(Enum):
    IDLE = "idle"  # nothing in progress
    STARTING = "starting"  # a bring-up: instance running, SSH answering, link up
    STOPPING = "stopping"  # closing connections and stopping the instance


class Goal(IntEnum):
    """How far a bring-up goes for its waiters."""

    SSH = 1  # the instance runs and its sshd answers (proxy @bastion, trust)
    LINK = 2  # the daemon's own SSH link is up (forwards, proxied channels)


class Link(Enum):
    DOWN = "disconnected"
    CONNECTING = "connecting"
    UP = "connected"


@dataclass(frozen=True)
class CloudCall:
    """The one EC2 call in flight (there is never more than one per profile)."""

    id: int
    op: str  # "describe", "start" or "stop"
    since: float
    slow_said: bool = False  # "still waiting for the EC2 API" went out


@dataclass(frozen=True)
class Persisted:
    """What must survive a SIGKILL of the daemon: saved whenever it changes."""

    instance_id: str | None
    started_by_us: bool = False
    idle_since: float | None = None
    listening: tuple[str, ...] = ()  # forwards that were listening


@dataclass(frozen=True)
class Lifecycle:
    setup: Setup
    instance: InstanceInfo | None = None  # what EC2 said last
    link: Link = Link.DOWN
    link_attempt: int = 0  # the bring-up whose link is up
    phase: Phase = Phase.IDLE
    label: str | None = None  # what the phase is doing now: status's "phase"
    attempt: int = 0  # the current (or last) bring-up; answers of others are stale
    goal: Goal = Goal.LINK
    may_start: bool = True  # False for a reconnect: a stopped instance stays stopped
    started_this_attempt: bool = False
    began_at: float | None = None
    next_poll_at: float | None = None
    next_refresh_at: float | None = None
    call: CloudCall | None = None
    calls: int = 0  # ids for EC2 calls
    waiters: tuple[tuple[int, Goal], ...] = ()  # requests waiting for a bring-up
    stop_waiters: tuple[int, ...] = ()  # requests waiting for a stop to finish
    stop_reason: str | None = None
    stop_called: bool = False  # StopInstances went out (or was not needed)
    after_stop: Goal | None = None  # a demand that came during the stop: start again after it
    activity: int = 0  # open connections + sessions, as last counted
    idle: IdleClock = field(default_factory=IdleClock)
    started_by_us: bool = False
    listening: frozenset[str] = frozenset()
    error: BastionTrayError | None = None
    link_losses: int = 0
    last_loss: str | None = None
    retry_at: float | None = None  # a reconnect is due then
    backoff: float = 0.0
    exiting: bool = False  # the daemon is shutting down: nothing starts any more
    saved: Persisted | None = None  # loaded at start, merged at the first describe

    @property
    def running(self) -> bool:
        return self.instance is not None and self.instance.state == "running"

    @property
    def host(self) -> str | None:
        """Where the bastion's sshd is: the configured host, else the instance's address now."""
        if self.setup.fixed_host is not None:
            return self.setup.fixed_host
        return self.instance.address if self.instance else None

    def persisted(self) -> Persisted:
        if self.saved is not None:  # not merged yet: keep what was saved
            return replace(self.saved, listening=tuple(sorted(self.listening)))
        return Persisted(self.instance.instance_id if self.instance else None,
                         self.started_by_us, self.idle.idle_since, tuple(sorted(self.listening)))


def initial(setup: Setup, saved: Persisted | None = None) -> Lifecycle:
    listening = frozenset(saved.listening) if saved else frozenset()
    return Lifecycle(setup=setup, saved=saved, listening=listening,
                     backoff=setup.timings.backoff_first)
