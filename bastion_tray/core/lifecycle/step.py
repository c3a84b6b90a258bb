"""`step(state, event, now) -> (state, effects)`: the one transition, dispatched by event."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from bastion_tray.core.durations import format_duration
from bastion_tray.core.errors import BastionTrayError, CloudError, WaitTimeout
from bastion_tray.core.idle import IdleClock
from bastion_tray.core.lifecycle.bringup import (
    _on_attempt_failed,
    _on_demand,
    _on_give_up,
    _on_link_lost,
    _on_link_up,
    _on_ssh_answered,
    begin,
    cloud_call,
    fail,
    observe,
    on_ingress,
    starting_seen,
)
from bastion_tray.core.lifecycle.effects import CloseLink, Effect, Log, Publish, Result, Save
from bastion_tray.core.lifecycle.events import (
    Activity,
    BackstopDone,
    CallDone,
    CallFailed,
    ClearError,
    Demand,
    Event,
    Exit,
    ForwardListening,
    GiveUp,
    IngressDone,
    Keep,
    LeaseDone,
    LinkFailed,
    LinkLost,
    LinkUp,
    Refresh,
    Seen,
    SessionsCounted,
    SshAnswered,
    SshFailed,
    StopRequested,
    Tick,
)
from bastion_tray.core.lifecycle.sharing import (
    check_failed,
    check_seen,
    on_backstop_done,
    on_counted,
    on_lease_done,
    reconcile,
)
from bastion_tray.core.lifecycle.state import KEEP_MAX, Goal, Lifecycle, Link, Phase
from bastion_tray.core.lifecycle.stopping import (
    _on_exit,
    _on_stop,
    after_check,
    check_tick,
    finish_stop,
    idle_decision,
    stopping_seen,
)
from bastion_tray.core.ports import InstanceInfo


def step(s: Lifecycle, ev: Event, now: float) -> Result:
    """The next state and what to do, for one event at wall-clock time `now`."""
    before = s.persisted()
    handler = _HANDLERS[type(ev)]
    s, out = handler(s, ev, now)
    s, more = after_check(s, now)
    out += more
    s, more = reconcile(s, now)
    out += more
    after = s.persisted()
    if after != before:
        out.append(Save(after))
    return s, out


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
    s = check_seen(s, s.call.since, ev.info)
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
    s = observe(s, now)
    if s.phase is Phase.STARTING:
        s, more = starting_seen(s, info, now)
    elif s.phase is Phase.STOPPING:
        s, more = stopping_seen(s, info, now)
    else:
        if isinstance(s.error, CloudError):  # EC2 answers again
            s = replace(s, error=None)
        s, more = _idle_seen(s, info)
    return s, out + more


def _idle_seen(s: Lifecycle, info: InstanceInfo) -> Result:
    if info.state != "running" and s.link is not Link.DOWN:
        s = replace(s, link=Link.DOWN, retry_at=None)
        return s, [CloseLink(), Log("warning", f"instance {info.instance_id} is {info.state} "
                                               "(stopped outside bastion-tray?); it starts "
                                               "again on the next demand"),
                   Publish("disconnected", {"reason": f"instance is {info.state}"})]
    return s, []


def _on_call_done(s: Lifecycle, ev: CallDone, now: float) -> Result:
    if s.call is None or ev.call != s.call.id:
        return s, []
    s = replace(s, call=None)
    return cloud_call(s, "describe", now)  # see what the start or stop did


def _on_call_failed(s: Lifecycle, ev: CallFailed, now: float) -> Result:
    if s.call is None or ev.call != s.call.id:
        return s, []
    return call_failed(replace(s, call=None), ev.error, now, s.call.op)


def call_failed(s: Lifecycle, error: BastionTrayError, now: float,
                op: str = "describe") -> Result:
    if s.awaiting_peer and op == "describe":
        # only the look-out while waiting for SSH failed: the wait goes on, and its own
        # timeout still ends it (an EC2 hiccup must not fail a bastion that is answering)
        return replace(s, next_poll_at=now + s.setup.timings.watch), []
    if s.phase is Phase.STARTING:
        return fail(s, error, now)
    if s.phase is Phase.STOPPING:
        state = s.instance.state if s.instance else "unknown"
        return finish_stop(s, state, error, now)
    if s.team.check is not None:
        return check_failed(s, error, now)
    return replace(s, error=error), [Log("warning", f"cannot read the instance state: "
                                                    f"{error.message}"),
                                     Publish("changed")]


def _on_tick(s: Lifecycle, ev: Tick, now: float) -> Result:
    t = s.setup.timings
    s = observe(replace(s, activity=max(0, ev.activity)), now)
    s, out = check_tick(s, now)
    call = s.call
    if call is not None:
        silent = now - call.since
        if silent >= t.api_give_up:
            error = CloudError(f"the EC2 API at {s.setup.endpoint} did not answer within "
                               f"{format_duration(t.api_give_up)}",
                               hint="check the network or VPN, and AWS_ENDPOINT_URL if set; "
                                    "then try again")
            return call_failed(replace(s, call=None), error, now, call.op)
        if silent >= t.api_slow and not call.slow_said and not s.awaiting_peer:
            s = replace(s, call=replace(call, slow_said=True))
            label = "waiting for the EC2 API"  # a phase of its own: the CLI prints a line
            out += [Publish("progress", {"phase": label, "detail": "still waiting for the EC2 "
                                         f"API at {s.setup.endpoint}…"}),
                    Log("info", f"still waiting for the EC2 API at {s.setup.endpoint}")]
    if s.phase is Phase.STARTING:
        if now - (s.began_at or now) > t.ready_timeout:
            return fail(replace(s, call=None), WaitTimeout(
                f"the bastion of profile {s.setup.profile} was not ready within "
                f"{format_duration(t.ready_timeout)} (last: {s.label or 'starting'})",
                hint="check the instance in the EC2 console"), now)
        if s.next_poll_at is not None and now >= s.next_poll_at and s.call is None:
            s, more = cloud_call(s, "describe", now)
            out += more
        return s, out
    if s.phase is Phase.STOPPING:
        return s, out
    if s.running and not s.exiting:
        s, more = idle_decision(s, now)
        out += more
        if s.phase is not Phase.IDLE:
            return s, out
    if s.retry_at is not None and now >= s.retry_at and not s.exiting:
        if s.listening or s.activity > 0:
            s, more = begin(s, Goal.LINK, False, now)
            return s, out + more
        s = replace(s, retry_at=None)
    if s.next_refresh_at is not None and now >= s.next_refresh_at and s.call is None:
        s, more = cloud_call(s, "describe", now)
        out += more
    return s, out


def _on_activity(s: Lifecycle, ev: Activity, now: float) -> Result:
    return observe(replace(s, activity=max(0, ev.count)), now), [Publish("changed")]


def _on_keep(s: Lifecycle, ev: Keep, now: float) -> Result:
    seconds = ev.seconds
    if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
        return s, [Log("warning", f"ignored keep of {seconds!r}: not a duration")]
    seconds = min(float(seconds), KEEP_MAX)
    s = replace(s, idle=s.idle.postpone(now, seconds))
    out: list[Effect] = [Log("info", f"keep running: no idle stop for {format_duration(seconds)}"),
                         Publish("changed")]
    team = s.team
    if team.watching or (team.check is not None and team.check.kind in ("idle", "recheck")):
        s = replace(s, team=replace(team, watching=False, recheck_at=None, check=None,
                                    in_use_by=(), other_sessions=0))
    if s.running and s.phase is Phase.IDLE and s.link is Link.DOWN and not s.exiting:
        s, more = begin(s, Goal.LINK, False, now)  # kept for use: the link (and lease) again
        out += more
    return s, out


def _on_forward(s: Lifecycle, ev: ForwardListening, now: float) -> Result:
    listening = s.listening | {ev.name} if ev.listening else s.listening - {ev.name}
    return replace(s, listening=listening), [Publish("forward", {"forward": ev.name,
                                                                 "listening": ev.listening})]


def _on_refresh(s: Lifecycle, ev: Refresh, now: float) -> Result:
    return cloud_call(s, "describe", now)


def _on_clear_error(s: Lifecycle, ev: ClearError, now: float) -> Result:
    return replace(s, error=None), [Publish("changed")]


_HANDLERS: dict[type, Any] = {
    Demand: _on_demand, GiveUp: _on_give_up, Tick: _on_tick, Activity: _on_activity,
    Refresh: _on_refresh, Seen: _on_seen, CallDone: _on_call_done, CallFailed: _on_call_failed,
    SshAnswered: _on_ssh_answered, SshFailed: _on_attempt_failed, LinkUp: _on_link_up,
    LinkFailed: _on_attempt_failed, LinkLost: _on_link_lost, Keep: _on_keep,
    StopRequested: _on_stop, Exit: _on_exit, ForwardListening: _on_forward,
    ClearError: _on_clear_error, LeaseDone: on_lease_done, BackstopDone: on_backstop_done,
    SessionsCounted: on_counted, IngressDone: on_ingress,
}
