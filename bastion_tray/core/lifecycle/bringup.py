"""Bringing the bastion up: describe, start, SSH answering, the link; and reconnecting."""

from __future__ import annotations

from dataclasses import replace

from bastion_tray.core.durations import format_duration
from bastion_tray.core.errors import BastionTrayError, CloudError, DaemonError
from bastion_tray.core.idle import IdleClock
from bastion_tray.core.lifecycle.access import (
    grant_failed_for,
    ingress_ready,
    on_ingress_done,
)
from bastion_tray.core.lifecycle.effects import (
    CallCloud,
    DropLink,
    Effect,
    KeepLink,
    Log,
    OpenLink,
    Publish,
    Resolve,
    Result,
    WaitSsh,
)
from bastion_tray.core.lifecycle.events import (
    Demand,
    GiveUp,
    IngressDone,
    LinkFailed,
    LinkLost,
    LinkUp,
    SshAnswered,
    SshFailed,
)
from bastion_tray.core.lifecycle.state import GONE, CloudCall, Goal, Lifecycle, Link, Phase
from bastion_tray.core.ports import InstanceInfo

OPENING_PORT = "opening the SSH port"


def cloud_call(s: Lifecycle, op: str, now: float) -> Result:
    """Start an EC2 call, unless one is in flight (its answer comes back as an event)."""
    if s.call is not None:
        return s, []
    call = CloudCall(s.calls + 1, op, now)
    return replace(s, call=call, calls=call.id, next_poll_at=None), [CallCloud(call.id, op)]


def progress(s: Lifecycle, label: str, detail: str) -> Result:
    return replace(s, label=label), [Publish("progress", {"phase": label, "detail": detail})]


def observe(s: Lifecycle, now: float) -> Lifecycle:
    """Feed the idle clock: it runs only while the instance runs."""
    if not s.running:
        return replace(s, idle=IdleClock(keep_until=s.idle.keep_until))
    return replace(s, idle=s.idle.observe(s.activity, now))


def begin(s: Lifecycle, goal: Goal, may_start: bool, now: float) -> Result:
    s = replace(s, phase=Phase.STARTING, attempt=s.attempt + 1, goal=goal, may_start=may_start,
                started_this_attempt=False, probing=False, began_at=now, error=None,
                retry_at=None, next_poll_at=None)
    s, out = progress(s, "checking the instance", s.setup.endpoint)
    if s.call is not None and s.call.op == "describe":
        return s, out  # the describe in flight answers for this bring-up too
    if s.call is not None:  # a start/stop call in flight: describe as soon as it returns
        return replace(s, next_poll_at=now), out
    s, more = cloud_call(s, "describe", now)
    return s, out + more


def fail(s: Lifecycle, error: BastionTrayError, now: float) -> Result:
    """The bring-up failed: every waiter hears why; a reconnect tries again later."""
    waiters = tuple(w for w, _ in s.waiters)
    retry = not s.may_start and bool(s.listening) and not s.exiting
    s = replace(s, phase=Phase.IDLE, label=None, link=Link.DOWN, error=error, waiters=(),
                probing=False, began_at=None, next_poll_at=None)
    out: list[Effect] = [Log("warning", f"bring-up failed: {error.message}"),
                         Publish("error", {"kind": error.kind, "message": error.message,
                                           "hint": error.hint})]
    if waiters:
        out.append(Resolve(waiters, error=error))
    if retry:
        s, more = schedule_retry(s, now)
        out += more
    return s, out


def schedule_retry(s: Lifecycle, now: float) -> Result:
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
        s, out = begin(s, ev.goal, True, now)
        return replace(s, waiters=((ev.waiter, ev.goal),)), out
    waiters = (*s.waiters, (ev.waiter, ev.goal))
    if s.phase is Phase.STARTING:
        return replace(s, waiters=waiters, goal=max(s.goal, ev.goal),
                       may_start=True), []  # a request may start it
    after = ev.goal if s.after_stop is None else max(s.after_stop, ev.goal)
    return replace(s, waiters=waiters, after_stop=after), [
        Log("info", "a request came during the stop: starting again once it is stopped")]


def _on_give_up(s: Lifecycle, ev: GiveUp, now: float) -> Result:
    return replace(s, waiters=tuple(w for w in s.waiters if w[0] != ev.waiter)), []


def starting_seen(s: Lifecycle, info: InstanceInfo, now: float) -> Result:
    t = s.setup.timings
    if s.awaiting_peer:
        return _watched(s, info, now)
    if info.state == "running":
        host = s.host
        if not host:
            return fail(s, CloudError(
                f"instance {info.instance_id} is running but has no public or Elastic IP "
                "address", hint='associate an Elastic IP, or set host = "…" in the profile\'s '
                                "[bastion] table"), now)
        if not ingress_ready(s):  # ingress = "my-ip": the rule first, then SSH
            out: list[Effect] = []
            if s.label != OPENING_PORT:
                s, out = progress(s, OPENING_PORT, f"port {s.setup.port} to this machine's "
                                                   "public address")
            return replace(s, next_poll_at=now + t.watch), out
        left = max(1.0, t.ready_timeout - (now - (s.began_at or now)))
        s, out = progress(replace(s, probing=True, next_poll_at=now + t.watch),
                          "waiting for SSH", f"{host}:{s.setup.port}")
        return s, [*out, WaitSsh(s.attempt, host, s.setup.port, left)]
    if info.state in GONE:
        gone = CloudError(f"instance {info.instance_id} is {info.state}: it cannot be started",
                          hint="point instance_id/name at the current bastion")
        return fail(s, gone, now)
    if info.state == "stopped" and not s.may_start:
        s = replace(s, phase=Phase.IDLE, label=None, began_at=None, retry_at=None)
        return s, [Log("warning", f"instance {info.instance_id} is stopped (outside "
                                  "bastion-tray?); it starts again on the next demand")]
    if info.state == "stopped" and not s.started_this_attempt:
        s, out = progress(s, "starting instance", f"{info.instance_id} was stopped")
        s = replace(s, started_this_attempt=True, started_by_us=True)
        s, more = cloud_call(s, "start", now)
        return s, out + more
    waited = format_duration(now - (s.began_at or now))
    detail = (f"waiting for {info.instance_id} to finish stopping, {waited}"
              if info.state == "stopping" else f"{info.instance_id} {info.state}, {waited}")
    s, out = progress(s, "starting instance", detail)
    return replace(s, next_poll_at=now + t.poll), out


def _watched(s: Lifecycle, info: InstanceInfo, now: float) -> Result:
    """A describe while the bring-up waits for SSH or the link: still running, wait on; any
    other state (stopped from the console, by a teammate's `stop --force`, by the backstop)
    ends the wait now, rather than "waiting for SSH" on a stopped instance until
    ready_timeout."""
    if info.state == "running":
        return replace(s, next_poll_at=now + s.setup.timings.watch), []
    what = "SSH" if s.probing else "the SSH link"
    return fail(s, CloudError(
        f"instance {info.instance_id} is {info.state} while bastion-tray waited for {what} "
        "(stopped outside bastion-tray?)",
        hint="run the command again to start it"), now)


def _on_ssh_answered(s: Lifecycle, ev: SshAnswered, now: float) -> Result:
    if s.phase is not Phase.STARTING or ev.attempt != s.attempt:
        return s, []
    reached = tuple(w for w, g in s.waiters if g is Goal.SSH)
    out: list[Effect] = [Resolve(reached, host=s.host)] if reached else []
    s = replace(s, probing=False,
                waiters=tuple(w for w in s.waiters if w[1] is not Goal.SSH))
    if s.goal is Goal.LINK or s.waiters:
        s, more = progress(replace(s, link=Link.CONNECTING), "connecting",
                            f"{s.host}:{s.setup.port}")
        return s, [*out, *more, OpenLink(s.attempt, s.host or "", s.setup.port)]
    s = observe(replace(s, phase=Phase.IDLE, label=None, began_at=None, next_poll_at=None),
                now)
    return s, [*out, Publish("changed")]


def _on_link_up(s: Lifecycle, ev: LinkUp, now: float) -> Result:
    if s.phase is not Phase.STARTING or ev.attempt != s.attempt:
        return s, [DropLink(ev.attempt)]
    took = now - (s.began_at or now)
    waiters = tuple(w for w, _ in s.waiters)
    s = replace(s, phase=Phase.IDLE, label=None, link=Link.UP, link_attempt=ev.attempt,
                waiters=(), began_at=None, next_poll_at=None,
                backoff=s.setup.timings.backoff_first, error=None)
    s = observe(s, now)
    where = f"{s.host}:{s.setup.port}"
    out: list[Effect] = [KeepLink(ev.attempt), Log("info", f"ready in {took:.1f} s ({where})"),
                         Publish("ready", {"seconds": round(took, 1), "host": where})]
    if waiters:
        out.append(Resolve(waiters, host=s.host))
    return s, out


def _on_attempt_failed(s: Lifecycle, ev: SshFailed | LinkFailed, now: float) -> Result:
    if s.phase is not Phase.STARTING or ev.attempt != s.attempt:
        return s, []
    return fail(s, ev.error, now)


def on_ingress(s: Lifecycle, ev: IngressDone, now: float) -> Result:
    """A grant or revoke came back; a bring-up that waited for its grant probes SSH now, or
    fails with the grant's reason."""
    error = grant_failed_for(s, ev)
    s, out = on_ingress_done(s, ev, now)
    if error is not None:
        s, more = fail(s, error, now)
        return s, out + more
    waiting = (s.phase is Phase.STARTING and not s.probing and s.link is Link.DOWN
               and s.instance is not None and s.instance.state == "running")
    if waiting and ingress_ready(s):
        s, more = starting_seen(s, s.instance, now)  # type: ignore[arg-type]
        out += more
    return s, out


def _on_link_lost(s: Lifecycle, ev: LinkLost, now: float) -> Result:
    if s.link is not Link.UP or ev.attempt != s.link_attempt:
        return s, []  # a link we closed or replaced
    s = replace(s, link=Link.DOWN, link_losses=s.link_losses + 1, last_loss=ev.reason)
    out: list[Effect] = [Log("warning", f"SSH link lost: {ev.reason}"),
                         Publish("disconnected", {"reason": ev.reason})]
    if s.phase is Phase.IDLE and not s.exiting and (s.listening or s.activity > 0):
        s, more = schedule_retry(s, now)
        out += more
    return s, out
