"""One profile's lifecycle as data: a frozen state, events, and a pure `step`.

`step(state, event, now) -> (state, effects)` is the only place that decides anything: when to
start or stop the instance, when to connect, reconnect or give up, when the idle stop is due.
The service (service/runtime.py) feeds it events — requests, what EC2 said, the link coming up
or going away, ticks — and carries out the effects it returns, in order. It decides nothing.

Races become states: a stop in progress is `Phase.STOPPING`, and no event in that phase ever
yields a start or a connect; a late answer of an abandoned bring-up carries its attempt number
and is dropped (a link that arrives late is closed). Every timing is a field of `Timings`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum, IntEnum
from typing import Any

from bastion_tray.core.durations import KEEP_LIMIT, format_duration
from bastion_tray.core.errors import BastionTrayError, CloudError, DaemonError, WaitTimeout
from bastion_tray.core.idle import IdleClock, IdlePolicy, Verdict
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


# ---- events -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Demand:
    """A request wants the bastion up to `goal`; `waiter` is told when (or why not)."""

    waiter: int
    goal: Goal = Goal.LINK
    may_start: bool = True


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
         | Exit | ForwardListening | ClearError)


# ---- effects ------------------------------------------------------------------------------

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
          | Resolve | StopFinished | Save | Publish | Log)
Result = tuple[Lifecycle, list[Effect]]


# ---- the transition -----------------------------------------------------------------------

def step(s: Lifecycle, ev: Event, now: float) -> Result:
    """The next state and what to do, for one event at wall-clock time `now`."""
    before = s.persisted()
    handler = _HANDLERS[type(ev)]
    s, out = handler(s, ev, now)
    after = s.persisted()
    if after != before:
        out.append(Save(after))
    return s, out


def _call(s: Lifecycle, op: str, now: float) -> Result:
    """Start an EC2 call, unless one is in flight (its answer comes back as an event)."""
    if s.call is not None:
        return s, []
    call = CloudCall(s.calls + 1, op, now)
    return replace(s, call=call, calls=call.id, next_poll_at=None), [CallCloud(call.id, op)]


def _progress(s: Lifecycle, label: str, detail: str) -> Result:
    return replace(s, label=label), [Publish("progress", {"phase": label, "detail": detail})]


def _observe(s: Lifecycle, now: float) -> Lifecycle:
    """Feed the idle clock: it runs only while the instance runs."""
    if not s.running:
        return replace(s, idle=IdleClock(keep_until=s.idle.keep_until))
    return replace(s, idle=s.idle.observe(s.activity, now))


def _begin(s: Lifecycle, goal: Goal, may_start: bool, now: float) -> Result:
    s = replace(s, phase=Phase.STARTING, attempt=s.attempt + 1, goal=goal, may_start=may_start,
                started_this_attempt=False, began_at=now, error=None, retry_at=None,
                next_poll_at=None)
    s, out = _progress(s, "checking the instance", s.setup.endpoint)
    if s.call is not None and s.call.op == "describe":
        return s, out  # the describe in flight answers for this bring-up too
    if s.call is not None:  # a start/stop call in flight: describe as soon as it returns
        return replace(s, next_poll_at=now), out
    s, more = _call(s, "describe", now)
    return s, out + more


def _fail(s: Lifecycle, error: BastionTrayError, now: float) -> Result:
    """The bring-up failed: every waiter hears why; a reconnect tries again later."""
    waiters = tuple(w for w, _ in s.waiters)
    retry = not s.may_start and bool(s.listening) and not s.exiting
    s = replace(s, phase=Phase.IDLE, label=None, link=Link.DOWN, error=error, waiters=(),
                began_at=None, next_poll_at=None)
    out: list[Effect] = [Log("warning", f"bring-up failed: {error.message}"),
                         Publish("error", {"kind": error.kind, "message": error.message,
                                           "hint": error.hint})]
    if waiters:
        out.append(Resolve(waiters, error=error))
    if retry:
        s, more = _schedule_retry(s, now)
        out += more
    return s, out


def _schedule_retry(s: Lifecycle, now: float) -> Result:
    delay = s.backoff
    s = replace(s, retry_at=now + delay, backoff=min(delay * 2, s.setup.timings.backoff_max))
    return s, [Log("info", f"reconnecting in {format_duration(delay)}")]


def _on_demand(s: Lifecycle, ev: Demand, now: float) -> Result:
    if s.exiting:
        return s, [Resolve((ev.waiter,), error=DaemonError(
            f"the daemon is exiting; profile {s.setup.profile} starts nothing more",
            hint="run the command again: it starts a new daemon"))]
    if s.phase is Phase.IDLE:
        if s.link is Link.UP:
            return s, [Resolve((ev.waiter,), host=s.host)]
        s, out = _begin(s, ev.goal, ev.may_start, now)
        return replace(s, waiters=((ev.waiter, ev.goal),)), out
    waiters = (*s.waiters, (ev.waiter, ev.goal))
    if s.phase is Phase.STARTING:
        return replace(s, waiters=waiters, goal=max(s.goal, ev.goal),
                       may_start=s.may_start or ev.may_start), []
    after = ev.goal if s.after_stop is None else max(s.after_stop, ev.goal)
    return replace(s, waiters=waiters, after_stop=after), [
        Log("info", "a request came during the stop: starting again once it is stopped")]


def _on_give_up(s: Lifecycle, ev: GiveUp, now: float) -> Result:
    return replace(s, waiters=tuple(w for w in s.waiters if w[0] != ev.waiter)), []


def _merge_saved(s: Lifecycle, info: InstanceInfo) -> Lifecycle:
    saved = s.saved
    if saved is None:
        return s
    s = replace(s, saved=None)
    if saved.instance_id != info.instance_id:
        return s
    idle = IdleClock(idle_since=saved.idle_since) if info.state == "running" else IdleClock()
    return replace(s, started_by_us=saved.started_by_us, idle=idle)


def _on_seen(s: Lifecycle, ev: Seen, now: float) -> Result:
    if s.call is None or ev.call != s.call.id:
        return s, []  # an answer we stopped waiting for
    before = s.instance.state if s.instance else None
    s = _merge_saved(replace(s, call=None, instance=ev.info), ev.info)
    info = ev.info
    out: list[Effect] = []
    if before != info.state:
        out += [Log("info", f"instance {info.instance_id} is {info.state}"),
                Publish("instance", {"state": info.state})]
    refresh = now + s.setup.timings.refresh if info.state != "stopped" else None
    s = replace(s, next_refresh_at=refresh)
    if info.state == "stopped":
        s = replace(s, started_by_us=s.started_by_us and s.phase is not Phase.IDLE)
    s = _observe(s, now)
    if s.phase is Phase.STARTING:
        s, more = _starting_seen(s, info, now)
    elif s.phase is Phase.STOPPING:
        s, more = _stopping_seen(s, info, now)
    else:
        if isinstance(s.error, CloudError):  # EC2 answers again
            s = replace(s, error=None)
        s, more = _idle_seen(s, info)
    return s, out + more


def _starting_seen(s: Lifecycle, info: InstanceInfo, now: float) -> Result:
    t = s.setup.timings
    if info.state == "running":
        host = s.host
        if not host:
            return _fail(s, CloudError(
                f"instance {info.instance_id} is running but has no public or Elastic IP "
                "address", hint='associate an Elastic IP, or set host = "…" in the profile\'s '
                                "[bastion] table"), now)
        left = max(1.0, t.ready_timeout - (now - (s.began_at or now)))
        s, out = _progress(s, "waiting for SSH", f"{host}:{s.setup.port}")
        return s, [*out, WaitSsh(s.attempt, host, s.setup.port, left)]
    if info.state in GONE:
        gone = CloudError(f"instance {info.instance_id} is {info.state}: it cannot be started",
                          hint="point instance_id/name at the current bastion")
        return _fail(s, gone, now)
    if info.state == "stopped" and not s.may_start:
        s = replace(s, phase=Phase.IDLE, label=None, began_at=None, retry_at=None)
        return s, [Log("warning", f"instance {info.instance_id} is stopped (outside "
                                  "bastion-tray?); it starts again on the next demand")]
    if info.state == "stopped" and not s.started_this_attempt:
        s, out = _progress(s, "starting instance", f"{info.instance_id} was stopped")
        s = replace(s, started_this_attempt=True, started_by_us=True)
        s, more = _call(s, "start", now)
        return s, out + more
    waited = format_duration(now - (s.began_at or now))
    detail = (f"waiting for {info.instance_id} to finish stopping, {waited}"
              if info.state == "stopping" else f"{info.instance_id} {info.state}, {waited}")
    s, out = _progress(s, "starting instance", detail)
    return replace(s, next_poll_at=now + t.poll), out


def _stopping_seen(s: Lifecycle, info: InstanceInfo, now: float) -> Result:
    if not s.stop_called:
        if info.state in ("pending", "running"):
            s = replace(s, stop_called=True)
            return _call(s, "stop", now)
        s = replace(s, stop_called=True)
    return _finish_stop(s, info.state, None, now)


def _idle_seen(s: Lifecycle, info: InstanceInfo) -> Result:
    if info.state != "running" and s.link is not Link.DOWN:
        s = replace(s, link=Link.DOWN, retry_at=None)
        return s, [CloseLink(), Log("warning", f"instance {info.instance_id} is {info.state} "
                                               "(stopped outside bastion-tray?); it starts "
                                               "again on the next demand"),
                   Publish("disconnected", {"reason": f"instance is {info.state}"})]
    return s, []


def _finish_stop(s: Lifecycle, state: str, error: BastionTrayError | None,
                 now: float) -> Result:
    waiters, reason, again = s.stop_waiters, s.stop_reason or "", s.after_stop
    s = replace(s, phase=Phase.IDLE, label=None, stop_waiters=(), stop_reason=None,
                stop_called=False, after_stop=None, error=error or s.error)
    out: list[Effect] = []
    if error is None:
        out += [Log("info", f"stopped ({state}): {reason}"),
                Publish("stopped", {"reason": reason, "state": state})]
    else:
        out += [Log("warning", f"could not stop the instance: {error.message}"),
                Publish("error", {"kind": error.kind, "message": error.message,
                                  "hint": error.hint})]
    out.append(StopFinished(waiters, state, error))
    if again is not None and not s.exiting:
        pending = s.waiters
        s, more = _begin(s, again, True, now)
        s = replace(s, waiters=pending)
        out += more
    return s, out


def _on_call_done(s: Lifecycle, ev: CallDone, now: float) -> Result:
    if s.call is None or ev.call != s.call.id:
        return s, []
    s = replace(s, call=None)
    return _call(s, "describe", now)  # see what the start or stop did


def _on_call_failed(s: Lifecycle, ev: CallFailed, now: float) -> Result:
    if s.call is None or ev.call != s.call.id:
        return s, []
    return _call_failed(replace(s, call=None), ev.error, now)


def _call_failed(s: Lifecycle, error: BastionTrayError, now: float) -> Result:
    if s.phase is Phase.STARTING:
        return _fail(s, error, now)
    if s.phase is Phase.STOPPING:
        state = s.instance.state if s.instance else "unknown"
        return _finish_stop(s, state, error, now)
    return replace(s, error=error), [Log("warning", f"cannot read the instance state: "
                                                    f"{error.message}"),
                                     Publish("changed")]


def _on_tick(s: Lifecycle, ev: Tick, now: float) -> Result:
    t = s.setup.timings
    s = _observe(replace(s, activity=max(0, ev.activity)), now)
    out: list[Effect] = []
    call = s.call
    if call is not None:
        silent = now - call.since
        if silent >= t.api_give_up:
            error = CloudError(f"the EC2 API at {s.setup.endpoint} did not answer within "
                               f"{format_duration(t.api_give_up)}",
                               hint="check the network or VPN, and AWS_ENDPOINT_URL if set; "
                                    "then try again")
            return _call_failed(replace(s, call=None), error, now)
        if silent >= t.api_slow and not call.slow_said:
            s = replace(s, call=replace(call, slow_said=True))
            label = s.label or "waiting for the EC2 API"
            out += [Publish("progress", {"phase": label, "detail": "still waiting for the EC2 "
                                         f"API at {s.setup.endpoint}…"}),
                    Log("info", f"still waiting for the EC2 API at {s.setup.endpoint}")]
    if s.phase is Phase.STARTING:
        if now - (s.began_at or now) > t.ready_timeout:
            return _fail(replace(s, call=None), WaitTimeout(
                f"the bastion of profile {s.setup.profile} was not ready within "
                f"{format_duration(t.ready_timeout)} (last: {s.label or 'starting'})",
                hint="check the instance in the EC2 console"), now)
        if s.next_poll_at is not None and now >= s.next_poll_at and s.call is None:
            s, more = _call(s, "describe", now)
            out += more
        return s, out
    if s.phase is Phase.STOPPING:
        return s, out
    if s.running and not s.exiting:
        s, more = _idle_decision(s, now)
        out += more
        if s.phase is not Phase.IDLE:
            return s, out
    if s.retry_at is not None and now >= s.retry_at and not s.exiting:
        if s.listening or s.activity > 0:
            s, more = _begin(s, Goal.LINK, False, now)
            return s, out + more
        s = replace(s, retry_at=None)
    if s.next_refresh_at is not None and now >= s.next_refresh_at and s.call is None:
        s, more = _call(s, "describe", now)
        out += more
    return s, out


def _idle_decision(s: Lifecycle, now: float) -> Result:
    decision = s.idle.decide(s.setup.policy, s.activity, now)
    if decision.verdict is Verdict.WARN:
        s = replace(s, idle=s.idle.warned_now())
        return s, [Log("info", decision.reason),
                   Publish("warn", {"stops_in": round(decision.stops_in or 0),
                                    "reason": decision.reason})]
    if decision.verdict is Verdict.STOP:
        return _begin_stop(s, decision.reason, listeners=False, now=now)
    return s, []


def _begin_stop(s: Lifecycle, reason: str, *, listeners: bool, now: float) -> Result:
    out: list[Effect] = [Log("info", f"stopping: {reason}")]
    if s.phase is Phase.STARTING and s.waiters:
        out.append(Resolve(tuple(w for w, _ in s.waiters), error=DaemonError(
            f"profile {s.setup.profile} was stopped while starting ({reason})")))
    listening = frozenset() if listeners else s.listening
    s = replace(s, phase=Phase.STOPPING, label="stopping", waiters=(), stop_reason=reason,
                stop_called=False, retry_at=None, began_at=None, next_poll_at=None,
                idle=IdleClock(), started_by_us=False, listening=listening,
                backoff=s.setup.timings.backoff_first)
    out.append(CloseConnections(listeners))
    if s.link is not Link.DOWN:
        out.append(CloseLink())
    s = replace(s, link=Link.DOWN)
    state = s.instance.state if s.instance else None
    if s.call is not None or state is None:
        # a start or describe in flight (or nothing known yet): act on what it shows, so a
        # StartInstances still on its way can never land after our StopInstances
        s, more = _call(s, "describe", now)
        return s, out + more
    if state in ("pending", "running"):
        s, more = _call(s, "stop", now)
        return replace(s, stop_called=True), out + more
    finished, more = _finish_stop(replace(s, stop_called=True), state, None, now)
    return finished, out + more


def _on_stop(s: Lifecycle, ev: StopRequested, now: float) -> Result:
    if s.phase is Phase.STOPPING:
        return replace(s, stop_waiters=(*s.stop_waiters, ev.waiter)), []
    s, out = _begin_stop(s, ev.reason, listeners=ev.close_listeners, now=now)
    if s.phase is Phase.STOPPING:
        return replace(s, stop_waiters=(*s.stop_waiters, ev.waiter)), out
    return s, [*out, StopFinished((ev.waiter,), s.instance.state if s.instance else "unknown")]


def _on_exit(s: Lifecycle, ev: Exit, now: float) -> Result:
    state = s.instance.state if s.instance else None
    ours = s.started_by_us or (s.saved is not None and s.saved.started_by_us)
    s = replace(s, exiting=True, retry_at=None)
    if s.phase is Phase.STOPPING:
        return replace(s, stop_waiters=(*s.stop_waiters, ev.waiter)), []
    starting = s.call is not None and s.call.op == "start"
    if s.setup.policy.auto_stop and ours and (state in ("pending", "running") or starting):
        return _on_stop(s, StopRequested(ev.waiter, "the daemon is exiting and started this "
                                                    "bastion"), now)
    out: list[Effect] = []
    if s.waiters:
        out.append(Resolve(tuple(w for w, _ in s.waiters),
                           error=DaemonError("the daemon is exiting")))
    s = replace(s, phase=Phase.IDLE, label=None, waiters=())
    return s, [*out, StopFinished((ev.waiter,), state or "unknown")]


def _on_ssh_answered(s: Lifecycle, ev: SshAnswered, now: float) -> Result:
    if s.phase is not Phase.STARTING or ev.attempt != s.attempt:
        return s, []
    reached = tuple(w for w, g in s.waiters if g is Goal.SSH)
    out: list[Effect] = [Resolve(reached, host=s.host)] if reached else []
    s = replace(s, waiters=tuple(w for w in s.waiters if w[1] is not Goal.SSH))
    if s.goal is Goal.LINK or s.waiters:
        s, more = _progress(replace(s, link=Link.CONNECTING), "connecting",
                            f"{s.host}:{s.setup.port}")
        return s, [*out, *more, OpenLink(s.attempt, s.host or "", s.setup.port)]
    s = _observe(replace(s, phase=Phase.IDLE, label=None, began_at=None), now)
    return s, [*out, Publish("changed")]


def _on_link_up(s: Lifecycle, ev: LinkUp, now: float) -> Result:
    if s.phase is not Phase.STARTING or ev.attempt != s.attempt:
        return s, [DropLink(ev.attempt)]
    took = now - (s.began_at or now)
    waiters = tuple(w for w, _ in s.waiters)
    s = replace(s, phase=Phase.IDLE, label=None, link=Link.UP, link_attempt=ev.attempt,
                waiters=(), began_at=None, backoff=s.setup.timings.backoff_first, error=None)
    s = _observe(s, now)
    where = f"{s.host}:{s.setup.port}"
    out: list[Effect] = [KeepLink(ev.attempt), Log("info", f"ready in {took:.1f} s ({where})"),
                         Publish("ready", {"seconds": round(took, 1), "host": where})]
    if waiters:
        out.append(Resolve(waiters, host=s.host))
    return s, out


def _on_attempt_failed(s: Lifecycle, ev: SshFailed | LinkFailed, now: float) -> Result:
    if s.phase is not Phase.STARTING or ev.attempt != s.attempt:
        return s, []
    return _fail(s, ev.error, now)


def _on_link_lost(s: Lifecycle, ev: LinkLost, now: float) -> Result:
    if s.link is not Link.UP or ev.attempt != s.link_attempt:
        return s, []  # a link we closed or replaced
    s = replace(s, link=Link.DOWN, link_losses=s.link_losses + 1, last_loss=ev.reason)
    out: list[Effect] = [Log("warning", f"SSH link lost: {ev.reason}"),
                         Publish("disconnected", {"reason": ev.reason})]
    if s.phase is Phase.IDLE and not s.exiting and (s.listening or s.activity > 0):
        s, more = _schedule_retry(s, now)
        out += more
    return s, out


def _on_activity(s: Lifecycle, ev: Activity, now: float) -> Result:
    return _observe(replace(s, activity=max(0, ev.count)), now), [Publish("changed")]


def _on_keep(s: Lifecycle, ev: Keep, now: float) -> Result:
    seconds = ev.seconds
    if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
        return s, [Log("warning", f"ignored keep of {seconds!r}: not a duration")]
    seconds = min(float(seconds), KEEP_MAX)
    s = replace(s, idle=s.idle.postpone(now, seconds))
    return s, [Log("info", f"keep running: no idle stop for {format_duration(seconds)}"),
               Publish("changed")]


def _on_forward(s: Lifecycle, ev: ForwardListening, now: float) -> Result:
    listening = s.listening | {ev.name} if ev.listening else s.listening - {ev.name}
    return replace(s, listening=listening), [Publish("forward", {"forward": ev.name,
                                                                 "listening": ev.listening})]


def _on_refresh(s: Lifecycle, ev: Refresh, now: float) -> Result:
    return _call(s, "describe", now)


def _on_clear_error(s: Lifecycle, ev: ClearError, now: float) -> Result:
    return replace(s, error=None), [Publish("changed")]


_HANDLERS: dict[type, Any] = {
    Demand: _on_demand, GiveUp: _on_give_up, Tick: _on_tick, Activity: _on_activity,
    Refresh: _on_refresh, Seen: _on_seen, CallDone: _on_call_done, CallFailed: _on_call_failed,
    SshAnswered: _on_ssh_answered, SshFailed: _on_attempt_failed, LinkUp: _on_link_up,
    LinkFailed: _on_attempt_failed, LinkLost: _on_link_lost, Keep: _on_keep,
    StopRequested: _on_stop, Exit: _on_exit, ForwardListening: _on_forward,
    ClearError: _on_clear_error,
}
