"""Stopping: the idle decision, an explicit stop, the stop at daemon exit."""

from __future__ import annotations

from dataclasses import replace

from bastion_tray.core.errors import BastionTrayError, DaemonError, WaitTimeout
from bastion_tray.core.idle import IdleClock, Verdict
from bastion_tray.core.lifecycle.bringup import begin, cloud_call
from bastion_tray.core.lifecycle.effects import (
    CloseConnections,
    CloseLink,
    Effect,
    Log,
    Publish,
    Resolve,
    Result,
    StopFinished,
)
from bastion_tray.core.lifecycle.events import Exit, StopRequested
from bastion_tray.core.lifecycle.sharing import (
    CHECK_GIVE_UP,
    UP,
    begin_check,
    check_failed,
    check_timed_out,
    settle,
)
from bastion_tray.core.lifecycle.state import Lifecycle, Link, Phase
from bastion_tray.core.ports import InstanceInfo


def stopping_seen(s: Lifecycle, info: InstanceInfo, now: float) -> Result:
    if not s.stop_called:
        if info.state in ("pending", "running"):
            s = replace(s, stop_called=True)
            return cloud_call(s, "stop", now)
        s = replace(s, stop_called=True)
    return finish_stop(s, info.state, None, now)


def finish_stop(s: Lifecycle, state: str, error: BastionTrayError | None,
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
        s, more = begin(s, again, True, now)
        s = replace(s, waiters=pending)
        out += more
    return s, out


def idle_decision(s: Lifecycle, now: float) -> Result:
    t = s.team
    if t.check is not None:
        return s, []  # its answers decide
    decision = s.idle.decide(s.setup.policy, s.activity, now)
    if t.watching or t.recheck_at is not None:  # others used it (or we could not look)
        if decision.verdict is not Verdict.STOP:  # "keep running" came meanwhile
            return replace(s, team=replace(t, watching=False, recheck_at=None)), []
        if t.recheck_at is not None and now >= t.recheck_at:
            return begin_check(s, "recheck", decision.reason, now)
        return s, []
    if decision.verdict is Verdict.WARN:
        s = replace(s, idle=s.idle.warned_now())
        return s, [Log("info", decision.reason),
                   Publish("warn", {"stops_in": round(decision.stops_in or 0),
                                    "reason": decision.reason})]
    if decision.verdict is Verdict.STOP:
        return begin_check(s, "idle", decision.reason, now)
    return s, []


def check_tick(s: Lifecycle, now: float) -> Result:
    """A check whose answers never came: it failed (the service should always answer)."""
    if not check_timed_out(s, now):
        return s, []
    return check_failed(s, WaitTimeout(f"no answer within {CHECK_GIVE_UP:.0f} s"), now)


def after_check(s: Lifecycle, now: float) -> Result:
    """Once a check's answers are in: stop, or not."""
    check = s.team.check
    s, out, why = settle(s, now)
    if check is None or why is None:
        return s, out
    listeners = check.close_listeners if check.kind == "stop" else False
    s, more = begin_stop(s, why, listeners=listeners, now=now)
    out += more
    if check.kind == "stop" and check.waiter is not None:
        if s.phase is Phase.STOPPING:
            s = replace(s, stop_waiters=(*s.stop_waiters, check.waiter))
        else:
            out.append(StopFinished((check.waiter,), s.instance.state if s.instance else "?"))
    return s, out


def begin_stop(s: Lifecycle, reason: str, *, listeners: bool, now: float) -> Result:
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
        s, more = cloud_call(s, "describe", now)
        return s, out + more
    if state in ("pending", "running"):
        s, more = cloud_call(s, "stop", now)
        return replace(s, stop_called=True), out + more
    finished, more = finish_stop(replace(s, stop_called=True), state, None, now)
    return finished, out + more


def _up(s: Lifecycle) -> bool:
    """The instance runs or is on its way (a start in flight counts)."""
    state = s.instance.state if s.instance else None
    return state in UP or (s.call is not None and s.call.op == "start")


def _ours_alone(s: Lifecycle) -> bool:
    """We started it moments ago and it is still coming up: nobody else can be on it."""
    return s.phase is Phase.STARTING and s.started_this_attempt


def _on_stop(s: Lifecycle, ev: StopRequested, now: float) -> Result:
    if s.phase is Phase.STOPPING:
        return replace(s, stop_waiters=(*s.stop_waiters, ev.waiter)), []
    out: list[Effect] = []
    old = s.team.check
    if old is not None and old.waiter is not None and old.kind == "stop":
        out.append(StopFinished((old.waiter,), s.instance.state if s.instance else "unknown",
                                DaemonError("another stop request took over")))
    if not ev.force and _up(s) and not _ours_alone(s):
        s, more = begin_check(s, "stop", ev.reason, now, waiter=ev.waiter,
                              close_listeners=ev.close_listeners)
        return s, out + more
    if _up(s):  # forced, or ours alone: we are the last one, whoever else was there
        s = replace(s, team=replace(s.team, backstop_delete=True, check=None, watching=False))
    s, more = begin_stop(s, ev.reason, listeners=ev.close_listeners, now=now)
    out += more
    if s.phase is Phase.STOPPING:
        return replace(s, stop_waiters=(*s.stop_waiters, ev.waiter)), out
    return s, [*out, StopFinished((ev.waiter,), s.instance.state if s.instance else "unknown")]


def _on_exit(s: Lifecycle, ev: Exit, now: float) -> Result:
    """Exit once what is ours is gone from the instance (the stop, the lease, the backstop):
    sharing.reconcile resolves the waiter then."""
    ours = s.started_by_us or (s.saved is not None and s.saved.started_by_us)
    team = s.team
    check = team.check if team.check is not None and team.check.kind == "stop" else None
    s = replace(s, exiting=True, retry_at=None,
                team=replace(team, exit_waiters=(*team.exit_waiters, ev.waiter), check=check,
                             watching=False, recheck_at=None))
    if s.phase is Phase.STOPPING or check is not None:
        return s, []
    reason = "the daemon is exiting and started this bastion"
    if s.setup.policy.auto_stop and ours and _up(s):
        if _ours_alone(s):
            s = replace(s, team=replace(s.team, backstop_delete=True))
            return begin_stop(s, reason, listeners=True, now=now)
        s, out = _abandon_bring_up(s)
        s, more = begin_check(s, "exit", reason, now)
        return s, out + more
    return _abandon_bring_up(s)


def _abandon_bring_up(s: Lifecycle) -> Result:
    out: list[Effect] = []
    if s.waiters:
        out.append(Resolve(tuple(w for w, _ in s.waiters),
                           error=DaemonError("the daemon is exiting")))
    link = Link.DOWN if s.link is Link.CONNECTING else s.link  # a late link is dropped
    return replace(s, phase=Phase.IDLE, label=None, waiters=(), began_at=None, link=link), out
