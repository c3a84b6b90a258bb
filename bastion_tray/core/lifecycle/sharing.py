"""A shared bastion (DESIGN.md "Teams"): our lease, the backstop, and the look before a stop.

`reconcile` runs after every event: it keeps the lease tag and the backstop schedule where the
state says they should be (put, renew, delete — one call of each kind in flight), drops a stop
check that the user's return made moot, and lets the daemon's exit finish once nothing of ours
is left on the instance. A stop — at the idle timeout, at exit, or asked for — first `check`s:
a fresh describe (others' live leases) and a count of others' SSH connections on the bastion.
While anyone else uses it we hold neither lease nor link (two idle daemons must never wait for
each other) and look again every `recheck`; the last one out stops it.
"""

from __future__ import annotations

from dataclasses import replace

from bastion_tray.core.durations import format_duration
from bastion_tray.core.errors import BastionTrayError, InUseError
from bastion_tray.core.idle import IdleClock
from bastion_tray.core.lifecycle.access import access_busy, reconcile_access
from bastion_tray.core.lifecycle.bringup import cloud_call
from bastion_tray.core.lifecycle.effects import (
    CloseLink,
    CountSessions,
    DeleteBackstop,
    DeleteLease,
    Effect,
    Log,
    Publish,
    PushBackstop,
    PutLease,
    Result,
    StopFinished,
)
from bastion_tray.core.lifecycle.events import BackstopDone, LeaseDone, SessionsCounted
from bastion_tray.core.lifecycle.state import Check, Lifecycle, Link, Phase
from bastion_tray.core.ports import InstanceInfo
from bastion_tray.core.team import in_use_text, leases_from

UP = ("pending", "running")
#: a check whose answers have not all come back after this long has failed
CHECK_GIVE_UP = 60.0
_GOLDEN = 0.6180339887498949


def _team(s: Lifecycle, **changes: object) -> Lifecycle:
    return replace(s, team=replace(s.team, **changes))  # type: ignore[arg-type]


def lease_wanted(s: Lifecycle) -> bool:
    """Whether we use the bastion now: a bring-up that starts or reaches it, the link up, a
    connection open, a reconnect due. Never while stopping, exiting, checking or watching."""
    t = s.team
    if s.exiting or s.phase is Phase.STOPPING or t.watching or s.instance is None:
        return False
    if t.check is not None and t.check.kind != "stop":
        return False
    if s.phase is Phase.STARTING:
        return s.started_this_attempt or s.instance.state in UP
    return s.running and (s.link is Link.UP or s.activity > 0 or s.retry_at is not None)


def access_wanted(s: Lifecycle) -> bool:
    """Our my-ip rule: while we use the bastion, and while we look at who else does before a
    stop — the count of its SSH sessions connects from our address, and a count the security
    group refuses would leave the leases alone to decide (and a plain-ssh teammate cut off)."""
    t, info = s.team, s.instance
    looking = t.watching or t.check is not None
    return lease_wanted(s) or (looking and info is not None and info.state in UP)


def reconcile(s: Lifecycle, now: float) -> Result:
    s, out = _drop_moot_check(s)
    s, more = _lease(s, now)
    out += more
    s, more = _backstop(s, now)
    out += more
    s, more = _check_describe(s, now)
    out += more
    s, more = reconcile_access(s, now, access_wanted(s))
    out += more
    s, more = _exit_done(s)
    return s, out + more


# ---- the lease --------------------------------------------------------------------------

def _lease(s: Lifecycle, now: float) -> Result:
    t = s.team
    if t.lease_call is not None or (t.lease_retry_at is not None and now < t.lease_retry_at):
        return s, []
    if lease_wanted(s):
        if t.lease_until is not None and t.lease_renew_at is not None and now < t.lease_renew_at:
            return s, []
        call, until = s.calls + 1, now + s.setup.lease_ttl
        s = replace(s, calls=call)
        return _team(s, lease_call=call, lease_op="put", lease_pending=until,
                     lease_maybe=True), [PutLease(call, until)]
    if t.lease_until is None and not t.lease_maybe:
        return s, []  # nothing of ours there
    if s.saved is not None and not s.exiting:
        return s, []  # a crash's tag: wait for the first describe, it may be wanted again
    call = s.calls + 1
    return _team(replace(s, calls=call), lease_call=call, lease_op="delete"), [DeleteLease(call)]


def on_lease_done(s: Lifecycle, ev: LeaseDone, now: float) -> Result:
    t = s.team
    if ev.call != t.lease_call:
        return s, []
    s = _team(s, lease_call=None)
    if ev.error is not None:
        return _lease_failed(s, t.lease_op, ev.error, now)
    if t.lease_op == "put":
        until = t.lease_pending
        s = _team(s, lease_until=until, lease_maybe=False, lease_pending=None,
                  lease_renew_at=now + s.setup.lease_ttl / 3, lease_retry_at=None,
                  lease_error=None)
        return s, [Publish("changed")] if t.lease_error else []
    s = _team(s, lease_until=None, lease_maybe=False, lease_renew_at=None, lease_retry_at=None,
              lease_error=None)
    return s, [Log("info", "lease released")]


def _lease_failed(s: Lifecycle, op: str, error: BastionTrayError, now: float) -> Result:
    message = f"could not {'write' if op == 'put' else 'delete'} the lease tag: {error.message}"
    out: list[Effect] = []
    if message != s.team.lease_error:  # said once, not at every retry
        out += [Log("warning", message + (f" ({error.hint})" if error.hint else "")),
                Publish("changed")]
    if s.exiting and op == "delete":  # do not hold the exit: the tag expires by itself
        until = s.team.lease_until
        out.append(Log("warning", "leaving the lease tag to expire"
                       + (f" in {format_duration(until - now)}" if until else "")))
        return _team(s, lease_until=None, lease_maybe=False, lease_error=message), out
    retry = now + min(60.0, s.setup.lease_ttl / 3)
    return _team(s, lease_retry_at=retry, lease_error=message, lease_pending=None), out


# ---- the backstop -------------------------------------------------------------------------

def _backstop(s: Lifecycle, now: float) -> Result:
    t, period = s.team, s.setup.backstop
    if t.backstop_call is not None or (t.backstop_retry_at is not None
                                       and now < t.backstop_retry_at):
        return s, []
    info = s.instance
    if t.backstop_delete:
        if info is None:
            return _team(s, backstop_delete=False), []
        call = s.calls + 1
        return (_team(replace(s, calls=call), backstop_call=call, backstop_op="delete"),
                [DeleteBackstop(call, info.instance_id)])
    if period is None or info is None or not s.setup.policy.auto_stop:
        return s, []
    if info.state not in UP:
        if t.backstop_at is not None and s.phase is Phase.IDLE and info.state == "stopped":
            return _team(s, backstop_delete=True), []  # stopped: the schedule has no use
        return s, []
    if not (lease_wanted(s) or t.watching):
        return s, []
    if t.backstop_pushed is not None and now < t.backstop_pushed + period / 3:
        return s, []
    call = s.calls + 1
    return (_team(replace(s, calls=call), backstop_call=call, backstop_op="push"),
            [PushBackstop(call, info.instance_id, now + period)])


def on_backstop_done(s: Lifecycle, ev: BackstopDone, now: float) -> Result:
    t = s.team
    if ev.call != t.backstop_call:
        return s, []
    s = _team(s, backstop_call=None)
    if ev.error is not None:
        what = "set" if t.backstop_op == "push" else "delete"
        message = f"could not {what} the backstop schedule: {ev.error.message}"
        out: list[Effect] = []
        if message != t.backstop_error:
            out += [Log("warning", message + (f" ({ev.error.hint})" if ev.error.hint else "")),
                    Publish("changed")]
        if s.exiting:
            return _team(s, backstop_delete=False, backstop_error=message), out
        retry = now + min(60.0, (s.setup.backstop or 180.0) / 3)
        return _team(s, backstop_retry_at=retry, backstop_error=message), out
    if t.backstop_op == "push":
        s = _team(s, backstop_at=ev.fires_at, backstop_pushed=now, backstop_retry_at=None,
                  backstop_error=None)
        return s, []
    s = _team(s, backstop_at=None, backstop_pushed=None, backstop_delete=False,
              backstop_retry_at=None, backstop_error=None)
    return s, [Log("info", "backstop schedule deleted")]


# ---- the check before a stop ------------------------------------------------------------

def begin_check(s: Lifecycle, kind: str, reason: str, now: float, *, waiter: int | None = None,
                close_listeners: bool = True) -> Result:
    number = s.team.checks + 1
    check = Check(id=number, kind=kind, reason=reason, since=now, waiter=waiter,
                  close_listeners=close_listeners)
    s = _team(s, check=check, checks=number, recheck_at=None)
    out: list[Effect] = [CountSessions(number)]
    if kind != "recheck":
        out.insert(0, Log("info", f"{reason}: checking whether anyone else uses the bastion"))
    if s.call is None:
        s, more = cloud_call(s, "describe", now)
        out += more
    return s, out


def check_seen(s: Lifecycle, since: float, info: InstanceInfo) -> Lifecycle:
    """A describe answered: it counts for the check if it was asked after the check began."""
    check = s.team.check
    if check is None or check.info is not None or since < check.since:
        return s
    return _team(s, check=replace(check, info=info))


def check_failed(s: Lifecycle, error: BastionTrayError, now: float) -> Result:
    """The describe of a check failed: look again later (a stop could not go out either)."""
    check = s.team.check
    if check is None:
        return s, []
    s = _team(s, check=None, recheck_at=now + recheck_delay(s))
    out: list[Effect] = [Log("warning", f"could not look who uses the bastion: {error.message}")]
    if check.kind == "stop" and check.waiter is not None:
        out.append(StopFinished((check.waiter,), _state(s), error))
    return s, out


def on_counted(s: Lifecycle, ev: SessionsCounted, now: float) -> Result:
    check = s.team.check
    if check is None or ev.check != check.id:
        return s, []
    error = ev.error.message if ev.error is not None else None
    return _team(s, check=replace(check, counted=True, sessions=ev.others, count_error=error)), []


def check_timed_out(s: Lifecycle, now: float) -> bool:
    check = s.team.check
    return check is not None and now - check.since > CHECK_GIVE_UP


def settle(s: Lifecycle, now: float) -> tuple[Lifecycle, list[Effect], str | None]:
    """Decide a check whose answers are in: (state, effects, why stop) — `why` is the reason
    to stop the instance now, None when it is not to be stopped."""
    check = s.team.check
    if check is None or check.info is None or not check.counted:
        return s, [], None
    info, t = check.info, s.team
    me = s.setup.user_id
    users = tuple(sorted(lease.user_id for lease in leases_from(info.leases)
                         if lease.user_id != me and lease.live(now)))
    sessions = check.sessions
    failures = t.count_failures + 1 if sessions is None else 0
    s = _team(s, check=None, in_use_by=users, other_sessions=sessions or 0,
              count_failures=failures)
    out: list[Effect] = []
    if info.state not in UP:  # someone else stopped it
        s = _team(s, watching=False, recheck_at=None, in_use_by=(), other_sessions=0)
        if check.kind == "stop" and check.waiter is not None:
            out.append(StopFinished((check.waiter,), info.state))
        return s, out, None
    unsure = (sessions is None and check.kind != "exit"
              and failures < s.setup.timings.count_failures)
    if users or sessions or unsure:
        return (*_in_use(s, check, users, sessions or 0, now), None)
    if sessions is None:
        out.append(Log("warning", f"could not count SSH sessions on the bastion "
                                  f"({check.count_error}); the leases alone decide"))
    s = _team(s, watching=False, recheck_at=None, in_use_by=(), other_sessions=0,
              backstop_delete=True)  # we are the last: our stop removes the backstop
    return s, out, check.reason


def _in_use(s: Lifecycle, check: Check, users: tuple[str, ...], sessions: int,
            now: float) -> Result:
    who = in_use_text(users, sessions) if users or sessions else (
        f"maybe in use (could not count SSH sessions: {check.count_error})")
    name = s.setup.profile
    if check.kind == "stop":
        error = InUseError(f"the bastion of profile {name} is {who}; nothing was stopped",
                           hint=f"run `bastion-tray stop {name} --force` to stop it anyway "
                                "(it cuts them off)")
        return s, [StopFinished((check.waiter,) if check.waiter else (), _state(s), error)]
    out: list[Effect] = []
    news = not s.team.watching or (users, sessions) != s.team.last_in_use
    if news:  # said when it starts or the others change, not at every look
        then = "not stopping it" if check.kind == "exit" else "looking again until they are gone"
        out += [Log("info", f"{check.reason}, but the bastion is {who}: {then}"),
                Publish("in_use", {"in_use_by": list(users), "other_sessions": sessions})]
    else:
        out.append(Publish("changed"))
    s = _team(s, last_in_use=(users, sessions))
    if check.kind == "exit":
        return s, out
    s = _team(s, watching=True, recheck_at=now + recheck_delay(s))
    if s.link is not Link.DOWN:  # our link would count as a session for the others
        s = replace(s, link=Link.DOWN, retry_at=None)
        out.append(CloseLink())
    return s, out


def recheck_delay(s: Lifecycle) -> float:
    phase = (s.setup.jitter + s.team.checks * _GOLDEN) % 1.0
    return s.setup.timings.recheck * (0.8 + 0.4 * phase)


def _check_describe(s: Lifecycle, now: float) -> Result:
    check = s.team.check
    if check is not None and check.info is None and s.call is None:
        return cloud_call(s, "describe", now)
    return s, []


def _drop_moot_check(s: Lifecycle) -> Result:
    """The user is back (a connection, a bring-up): an idle check or watch has no point."""
    t = s.team
    kind = t.check.kind if t.check else None
    back = s.activity > 0 or s.phase is Phase.STARTING
    if not back or not (t.watching or kind in ("idle", "recheck")):
        return s, []
    s = _team(s, check=None if kind in ("idle", "recheck") else t.check, watching=False,
              recheck_at=None, in_use_by=(), other_sessions=0)
    s = replace(s, idle=IdleClock(keep_until=s.idle.keep_until))  # its idle time starts anew
    return s, [Publish("changed")]


def _exit_done(s: Lifecycle) -> Result:
    t = s.team
    if not t.exit_waiters or s.phase is not Phase.IDLE or t.check is not None:
        return s, []
    if t.lease_call is not None or t.lease_until is not None or t.lease_maybe:
        return s, []
    if t.backstop_call is not None or t.backstop_delete or access_busy(s):
        return s, []
    waiters = t.exit_waiters
    return _team(s, exit_waiters=()), [StopFinished(waiters, _state(s), s.error)]


def _state(s: Lifecycle) -> str:
    return s.instance.state if s.instance else "unknown"

