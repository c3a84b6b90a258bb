"""ingress = "my-ip" (DESIGN.md "Access"): the SSH port opens to this machine only while in use.

Our rule follows the lease: granted when we start using the bastion, renewed with it, revoked
when we stop using it. Each bring-up (a start, a reconnect after a lost link or a wake on
another network) asks for a grant of its own — the address is learnt anew — and its SSH probe
waits for that grant: the rule is in place before we connect. A grant that fails fails the
bring-up with its reason; nothing falls back to 0.0.0.0/0.
"""

from __future__ import annotations

from dataclasses import replace

from bastion_tray.core.durations import format_duration
from bastion_tray.core.errors import BastionTrayError
from bastion_tray.core.lifecycle.effects import (
    Effect,
    GrantIngress,
    Log,
    Publish,
    Result,
    RevokeIngress,
)
from bastion_tray.core.lifecycle.events import IngressDone
from bastion_tray.core.lifecycle.state import Lifecycle, Phase


def _access(s: Lifecycle, **changes: object) -> Lifecycle:
    return replace(s, access=replace(s.access, **changes))  # type: ignore[arg-type]


def ingress_ready(s: Lifecycle) -> bool:
    """Whether the current bring-up may probe SSH: no my-ip, or its grant is in."""
    return not s.setup.ingress or s.access.granted_attempt == s.attempt


def reconcile_access(s: Lifecycle, now: float, wanted: bool) -> Result:
    """Keep our rule where the state says it should be; `wanted`: we use the bastion now
    (sharing.lease_wanted). One grant or revoke in flight at a time."""
    a = s.access
    if a.call is not None:
        return s, []
    if s.setup.ingress and wanted:
        fresh = s.phase is Phase.STARTING and a.granted_attempt != s.attempt
        if not fresh:
            if a.retry_at is not None and now < a.retry_at:
                return s, []
            if a.until is not None and a.renew_at is not None and now < a.renew_at:
                return s, []
        call, until = s.calls + 1, now + s.setup.lease_ttl
        s = replace(s, calls=call)
        return _access(s, call=call, op="grant", pending=until, pending_attempt=s.attempt,
                       maybe=True), [GrantIngress(call, until)]
    if a.until is None and not a.maybe:
        return s, []  # nothing of ours there
    if a.retry_at is not None and now < a.retry_at:
        return s, []
    if s.saved is not None and not s.exiting:
        return s, []  # a crash's rule: wait for the first describe, it may be wanted again
    call = s.calls + 1
    return _access(replace(s, calls=call), call=call, op="revoke"), [RevokeIngress(call)]


def on_ingress_done(s: Lifecycle, ev: IngressDone, now: float) -> Result:
    """Returns the state and effects; a grant that fails its bring-up leaves `ingress_failed`
    for the caller (bringup.fail needs the bring-up's own machinery)."""
    a = s.access
    if ev.call != a.call:
        return s, []
    s = _access(s, call=None)
    if ev.error is not None:
        return _failed(s, a.op, ev.error, now)
    if a.op == "grant":
        moved = a.address is not None and ev.address != a.address
        s = _access(s, until=a.pending, address=ev.address, covered_by=ev.covered_by,
                    maybe=False, pending=None, renew_at=now + s.setup.lease_ttl / 3,
                    retry_at=None, error=None, granted_attempt=a.pending_attempt)
        if a.until is None or moved or a.error is not None:
            whose = f" (already open to it by {ev.covered_by}'s rule)" if ev.covered_by else ""
            verb = "now" if moved else "opened to"
            return s, [Log("info", f"SSH port {verb} {ev.address}{whose}"
                                   + (f", no longer {a.address}" if moved else "")),
                       Publish("changed")]
        return s, []
    s = _access(s, until=None, address=None, covered_by=None, maybe=False, renew_at=None,
                retry_at=None, error=None)
    return s, [Log("info", "SSH port closed again (our my-ip rule revoked)"), Publish("changed")]


def _failed(s: Lifecycle, op: str, error: BastionTrayError, now: float) -> Result:
    what = "open the SSH port to this machine" if op == "grant" else "revoke our SSH rule"
    message = f"could not {what}: {error.message}"
    out: list[Effect] = []
    if message != s.access.error:  # said once, not at every retry
        out += [Log("warning", message + (f" ({error.hint})" if error.hint else "")),
                Publish("changed")]
    if op == "revoke" and s.exiting:  # do not hold the exit: the rule's until reaps it
        until = s.access.until
        out.append(Log("warning", "leaving the SSH rule to expire"
                       + (f" in {format_duration(until - now)}" if until else "")))
        return _access(s, until=None, maybe=False, error=message), out
    retry = now + min(60.0, s.setup.lease_ttl / 3)
    return _access(s, retry_at=retry, error=message, pending=None), out


def grant_failed_for(s: Lifecycle, ev: IngressDone) -> BastionTrayError | None:
    """The error that ends the current bring-up: a grant asked for it failed. Read before
    `on_ingress_done` (which forgets the op)."""
    a = s.access
    if (ev.call != a.call or ev.error is None or a.op != "grant"
            or s.phase is not Phase.STARTING or a.pending_attempt != s.attempt):
        return None
    return ev.error


def access_busy(s: Lifecycle) -> bool:
    """Something of ours may still be on the security group: the exit waits for it."""
    a = s.access
    return a.call is not None or a.until is not None or a.maybe
