"""A profile's entry of `status --json` (DESIGN.md contract, extended), read off its runtime.

Called with the runtime's lock held, so the numbers in one snapshot agree with each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bastion_tray.core.errors import BastionTrayError

if TYPE_CHECKING:
    from bastion_tray.service.links import Listener
    from bastion_tray.service.runtime import ProfileRuntime


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


def profile_snapshot(rt: ProfileRuntime, now: float) -> dict[str, Any]:
    info, cfg = rt.info, rt.profile
    activity = rt.activity()
    running = info is not None and info.state == "running"
    decision = rt.idle.decide(rt.policy, activity, now)
    counting = running and rt.policy.auto_stop and activity == 0
    return {
        "bastion": {
            "instance_id": info.instance_id if info else cfg.bastion.instance_id,
            "name": info.name if info else cfg.bastion.name,
            "state": info.state if info else "unknown",
            "host": rt.host() if running else None,
            "ssh": rt.ssh,
        },
        "forwards": {
            name: forward_snapshot(f.local, f.bind, f"{f.remote_host}:{f.remote_port}",
                                   rt.forwards.get(name))
            for name, f in cfg.forwards.items()
        },
        "hosts": sorted(cfg.hosts),
        "sessions": rt.sessions,
        "idle_seconds": _round(rt.idle.idle_seconds(now)) if counting else None,
        "stops_in_seconds": _round(decision.stops_in) if counting else None,
        "idle_reason": decision.reason if running else None,
        "auto_stop": rt.policy.auto_stop,
        "link_losses": rt.link_losses,
        "last_link_loss": rt.last_loss,
        "phase": rt.phase,
        "starting_for_seconds": _round(rt.starting_for),
        "started_by_daemon": bool(info and rt.state.started(info.instance_id)),
        "error": error_snapshot(rt.error),
    }
