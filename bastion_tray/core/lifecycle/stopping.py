"""Stopping: the idle decision, an explicit stop, the stop at daemon exit."""

from __future__ import annotations

from dataclasses import replace

from bastion_tray.core.errors import BastionTrayError, DaemonError
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
    decision = s.idle.decide(s.setup.policy, s.activity, now)
    if decision.verdict is Verdict.WARN:
        s = replace(s, idle=s.idle.warned_now())
        return s, [Log("info", decision.reason),
                   Publish("warn", {"stops_in": round(decision.stops_in or 0),
                                    "reason": decision.reason})]
    if decision.verdict is Verdict.STOP:
        return begin_stop(s, decision.reason, listeners=False, now=now)
    return s, []


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


def _on_stop(s: Lifecycle, ev: StopRequested, now: float) -> Result:
    if s.phase is Phase.STOPPING:
        return replace(s, stop_waiters=(*s.stop_waiters, ev.waiter)), []
    s, out = begin_stop(s, ev.reason, listeners=ev.close_listeners, now=now)
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
