"""A profile's entry of `status --json` (DESIGN.md contract, extended): the lifecycle's state
value serialized, plus the counters the live handles (forwards, sessions) hold."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bastion_tray.core.config import Profile
from bastion_tray.core.errors import BastionTrayError
from bastion_tray.core.lifecycle import Lifecycle, Phase
from bastion_tray.core.team import iso_utc
from bastion_tray.service.links import Listener


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def forward_snapshot(cfg_local: str, bind: str, remote: str,
                     listener: Listener | None) -> dict[str, Any]:
    return {
        "local": f"{bind}:{listener.local_port}" if listener else cfg_local,
        "remote": remote,
        "listening": bool(listener and listener.listening),
        "active_connections": listener.active_connections if listener else 0,
        "total_connections": listener.total_connections if listener else 0,
        "bytes_up": listener.bytes_up if listener else 0,
        "bytes_down": listener.bytes_down if listener else 0,
    }


def error_snapshot(error: BastionTrayError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {"kind": error.kind, "message": error.message, "hint": error.hint}


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else iso_utc(epoch)


def team_snapshot(s: Lifecycle, now: float) -> dict[str, Any]:
    """Who else uses the bastion, our lease and the backstop."""
    t, setup = s.team, s.setup
    if setup.backstop is None:
        backstop = {"state": "off", "fires_at": None, "fires_in_seconds": None,
                    "reason": setup.backstop_off}
    elif t.backstop_error is not None:
        backstop = {"state": "error", "fires_at": _iso(t.backstop_at),
                    "fires_in_seconds": _round(t.backstop_at - now) if t.backstop_at else None,
                    "reason": t.backstop_error}
    elif t.backstop_at is not None:
        backstop = {"state": "armed", "fires_at": _iso(t.backstop_at),
                    "fires_in_seconds": _round(max(0.0, t.backstop_at - now)), "reason": None}
    else:
        backstop = {"state": "idle", "fires_at": None, "fires_in_seconds": None,
                    "reason": "set while this daemon uses the bastion"}
    return {
        "user_id": setup.user_id,
        "in_use_by": list(t.in_use_by),
        "other_sessions": t.other_sessions,
        "waiting_for_others": t.watching,
        "lease": {"held": t.lease_until is not None, "until": _iso(t.lease_until),
                  "error": t.lease_error},
        "backstop": backstop,
    }


def ingress_snapshot(s: Lifecycle, cfg: Profile) -> dict[str, Any]:
    """ingress = "my-ip": the /32 open to us now and until when (DESIGN.md "Access")."""
    a = s.access
    return {"mode": cfg.bastion.ingress, "address": a.address, "until": _iso(a.until),
            "covered_by": a.covered_by, "error": a.error}


def profile_snapshot(s: Lifecycle, cfg: Profile, forwards: Mapping[str, Listener],
                     sessions: int, now: float) -> dict[str, Any]:
    info = s.instance
    activity = sessions + sum(f.active_connections for f in forwards.values())
    policy = s.setup.policy
    decision = s.idle.decide(policy, activity, now)
    counting = (s.running and policy.auto_stop and activity == 0 and s.phase is Phase.IDLE
                and s.idle.idle_since is not None)
    deciding = s.team.watching or s.team.check is not None  # the stop waits for the others
    return {
        "bastion": {
            "instance_id": info.instance_id if info else cfg.bastion.instance_id,
            "name": info.name if info else cfg.bastion.name,
            "state": info.state if info else "unknown",
            "host": s.host if s.running else None,
            "ssh": s.link.value,
            "ingress": ingress_snapshot(s, cfg),
        },
        "forwards": {
            name: forward_snapshot(f.local, f.bind, f"{f.remote_host}:{f.remote_port}",
                                   forwards.get(name))
            for name, f in cfg.forwards.items()
        },
        "hosts": sorted(cfg.hosts),
        "sessions": sessions,
        "waiting": len(s.waiters),  # requests waiting for the bastion to come up
        "idle_seconds": _round(s.idle.idle_seconds(now)) if counting else None,
        "stops_in_seconds": (_round(decision.stops_in) if counting and not deciding
                             else None),
        "idle_reason": decision.reason if s.running else None,
        "auto_stop": policy.auto_stop,
        "link_losses": s.link_losses,
        "last_link_loss": s.last_loss,
        "phase": s.label,
        "lifecycle": s.phase.value,
        "starting_for_seconds": (_round(now - s.began_at)
                                 if s.phase is Phase.STARTING and s.began_at else None),
        "started_by_daemon": s.persisted().started_by_us,
        "error": error_snapshot(s.error),
        **team_snapshot(s, now),
    }
