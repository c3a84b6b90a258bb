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
    watch: float = 5.0  # while waiting for SSH or the link: describe this often, so an
    # instance stopped meanwhile ends the wait (and its "waiting for SSH") at once
    refresh: float = 30.0  # describe a bastion that is not stopped this often (outside stops)
    ready_timeout: float = 300.0  # a bring-up (start, SSH answering, link up) gives up after this
    backoff_first: float = 1.0  # first reconnect after a lost link
    backoff_max: float = 30.0  # reconnect delays double up to this
    api_slow: float = 5.0  # an EC2 call silent this long: say "still waiting for the EC2 API"
    api_give_up: float = 30.0  # an EC2 call silent this long has failed
    recheck: float = 30.0  # while others use the bastion, look again this often (± 20 %)
    count_failures: int = 3  # counting others' SSH sessions failed this often: leases alone decide


@dataclass(frozen=True)
class Setup:
    """What a profile's lifecycle needs to know of its config; fixed for the daemon's life."""

    profile: str
    port: int  # the bastion's SSH port
    fixed_host: str | None  # the configured host, None for host = "auto" (look it up each start)
    policy: IdlePolicy
    timings: Timings = field(default_factory=Timings)
    endpoint: str = "the EC2 API"  # where EC2 calls go, for messages about a hanging endpoint
    user_id: str = "me"  # this user's lease tag is bastion-tray:lease:<user_id>
    lease_ttl: float = 600.0  # a lease's life; renewed every third of it
    backstop: float | None = None  # seconds ahead the cloud-side stop is kept; None: off
    backstop_off: str | None = None  # why it is off, for status
    ingress: bool = False  # ingress = "my-ip": the SSH port opens to us only while we use it
    jitter: float = 0.0  # 0…1, this daemon's phase of the re-check period (two idle daemons
    # that vetoed each other must not keep looking at the same moment)


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
class Check:
    """Looking at who else uses the bastion before a stop: a fresh describe (their leases)
    and a count of the SSH connections on the bastion, whichever answers first."""

    id: int
    kind: str  # "idle" (the idle timeout), "recheck", "exit", "stop" (an explicit stop)
    reason: str
    since: float
    waiter: int | None = None  # the explicit stop's or the exit's request
    close_listeners: bool = True  # what the explicit stop asked for
    info: InstanceInfo | None = None  # the describe that answered after `since`
    counted: bool = False
    sessions: int | None = None  # others' SSH connections; None: the count failed
    count_error: str | None = None


@dataclass(frozen=True)
class Team:
    """This daemon's part in a shared bastion: its lease, the backstop, the stop check."""

    lease_until: float | None = None  # our lease tag's expiry as last written
    lease_maybe: bool = False  # a tag of ours may exist (a put in flight or failed, a crash)
    lease_renew_at: float | None = None  # put again then
    lease_retry_at: float | None = None  # a put or delete failed: try again then
    lease_call: int | None = None  # the one lease call in flight
    lease_op: str = ""  # "put" or "delete"
    lease_pending: float | None = None  # the expiry a put in flight writes
    lease_error: str | None = None
    backstop_at: float | None = None  # when the schedule fires, as last pushed
    backstop_pushed: float | None = None  # when we last pushed it
    backstop_retry_at: float | None = None
    backstop_call: int | None = None
    backstop_op: str = ""  # "push" or "delete"
    backstop_delete: bool = False  # the last user's stop: delete the schedule
    backstop_error: str | None = None
    check: Check | None = None
    checks: int = 0  # how many checks began (ids, and the jitter's sequence)
    watching: bool = False  # idle but others use it: no lease, no link, look again later
    recheck_at: float | None = None
    in_use_by: tuple[str, ...] = ()  # other users' live leases, as last seen
    other_sessions: int = 0  # others' SSH connections on the bastion, as last counted
    last_in_use: tuple[tuple[str, ...], int] = ((), 0)  # what was last said about them
    count_failures: int = 0  # in a row
    exit_waiters: tuple[int, ...] = ()  # the daemon's exit waits until the lease is gone


@dataclass(frozen=True)
class Access:
    """Our my-ip rule on the bastion's SSH security group (DESIGN.md "Access")."""

    until: float | None = None  # the rule's until as last written (None: no rule of ours)
    address: str | None = None  # the /32 it opens
    covered_by: str | None = None  # another's rule already opens our address
    maybe: bool = False  # a rule of ours may exist (a grant in flight or failed, a crash)
    renew_at: float | None = None
    retry_at: float | None = None  # a renewal or revoke failed: try again then
    call: int | None = None  # the one grant or revoke in flight
    op: str = ""  # "grant" or "revoke"
    pending: float | None = None  # the until a grant in flight writes
    pending_attempt: int = 0  # the bring-up a grant in flight was asked for
    granted_attempt: int = -1  # the bring-up whose grant succeeded: its SSH probe waits for it
    error: str | None = None


@dataclass(frozen=True)
class Persisted:
    """What must survive a SIGKILL of the daemon: saved whenever it changes."""

    instance_id: str | None
    started_by_us: bool = False
    idle_since: float | None = None
    listening: tuple[str, ...] = ()  # forwards that were listening
    lease: bool = False  # a lease tag of ours may exist on the instance
    ingress: bool = False  # a my-ip rule of ours may exist on the SSH group


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
    probing: bool = False  # this bring-up's WaitSsh is out (its answer is awaited)
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
    team: Team = field(default_factory=Team)
    access: Access = field(default_factory=Access)

    @property
    def running(self) -> bool:
        return self.instance is not None and self.instance.state == "running"

    @property
    def awaiting_peer(self) -> bool:
        """A bring-up waits on the bastion itself (its sshd answering, the link): EC2 said
        running, and only a describe that says otherwise changes that."""
        return self.phase is Phase.STARTING and (self.probing or self.link is Link.CONNECTING)

    @property
    def host(self) -> str | None:
        """Where the bastion's sshd is: the configured host, else the instance's address now."""
        if self.setup.fixed_host is not None:
            return self.setup.fixed_host
        return self.instance.address if self.instance else None

    def persisted(self) -> Persisted:
        lease = self.team.lease_until is not None or self.team.lease_maybe
        ingress = self.access.until is not None or self.access.maybe
        if self.saved is not None:  # not merged yet: keep what was saved
            return replace(self.saved, listening=tuple(sorted(self.listening)), lease=lease,
                           ingress=ingress)
        return Persisted(self.instance.instance_id if self.instance else None,
                         self.started_by_us, self.idle.idle_since, tuple(sorted(self.listening)),
                         lease, ingress)


def initial(setup: Setup, saved: Persisted | None = None) -> Lifecycle:
    listening = frozenset(saved.listening) if saved else frozenset()
    team = Team(lease_maybe=bool(saved and saved.lease))  # a crash may have left our tag
    access = Access(maybe=bool(saved and saved.ingress))  # … or our rule
    return Lifecycle(setup=setup, saved=saved, listening=listening, team=team, access=access,
                     backoff=setup.timings.backoff_first)
