"""`trust`'s side in the daemon: a host's key as it answers now, and recording a confirmed one.

The bastion is asked directly (after starting it when needed); a private host of
``[profiles.P.hosts]`` through a ``direct-tcpip`` channel of the bastion link, exactly the way
``shell`` and the generated ssh config reach it, so the key shown is the key OpenSSH will see.
Keys are judged and recorded under the host's alias (core/trust.py), never its address.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from bastion_tray.core import lifecycle as lc
from bastion_tray.core.errors import HostKeyError
from bastion_tray.core.trust import BASTION, KeyTarget, bastion_target, private_target

if TYPE_CHECKING:
    from bastion_tray.service.runtime import ProfileRuntime

log = logging.getLogger("bastion_tray.daemon")


def _target_name(host: object) -> str | None:
    """None for the bastion (no host, or "bastion"); else the host's name, as given."""
    return None if host in (None, "", BASTION) else str(host)


def host_key(rt: ProfileRuntime, host: object = None) -> dict[str, Any]:
    """The key `host` (None: the bastion) presents now, and what the app's stores say of it."""
    name = _target_name(host)
    if name is None:
        address = rt.ensure(lc.Goal.SSH)
        target: KeyTarget = bastion_target(rt.name, address, rt.profile.bastion.port)
        fingerprint, line = rt.adapters.fetch_host_key(target.host, target.port)
        pin, instance_id = rt.profile.bastion.host_key, None  # None: the bastion's own
    else:
        cfg = rt.profile.host(name)  # UsageError listing the known hosts
        target = private_target(rt.name, cfg.name, cfg.hostname, cfg.port)
        channel = rt.open_channel(cfg.hostname, cfg.port, ("127.0.0.1", 0))
        fingerprint, line = rt.adapters.fetch_host_key(cfg.hostname, cfg.port, via=channel)
        pin, instance_id = None, cfg.instance_id
    status, known, recorded = rt.adapters.host_key_status(target, line, pin)
    reply = {"profile": rt.name, "target": name or BASTION, "alias": target.alias,
             "host": target.host, "port": target.port, "fingerprint": fingerprint, "key": line,
             "status": status, "known": known, "recorded": recorded}
    if status == "unknown":  # what the instance's console output says of it (the CLI shows it)
        if name is not None and instance_id is None:
            reply["console"] = {"outcome": "unavailable", "listed": [], "instance_id": None,
                                "reason": f"host {name} has no instance_id in the config"}
        else:
            verdict = rt.adapters.console_verdict(rt.name, fingerprint, instance_id)
            reply["console"] = {"outcome": verdict.outcome, "reason": verdict.reason,
                                "listed": sorted(verdict.listed),
                                "instance_id": verdict.instance_id}
    return reply


def trust(rt: ProfileRuntime, wanted: str, host: object = None) -> dict[str, Any]:
    """Record `host`'s key, but only if it is the one the user confirmed (`wanted`)."""
    seen = host_key(rt, host)
    what = "the bastion" if seen["target"] == BASTION else f"host {seen['target']}"
    where = f"{seen['host']}:{seen['port']}"
    if seen["fingerprint"] != wanted:
        raise HostKeyError(f"{what} ({seen['alias']} at {where}) now presents "
                           f"{seen['fingerprint']}, not the confirmed {wanted}; nothing was "
                           "recorded", fingerprint=seen["fingerprint"])
    name = _target_name(host)
    target = (bastion_target(rt.name, seen["host"], seen["port"]) if name is None else
              private_target(rt.name, name, seen["host"], seen["port"]))
    path = rt.adapters.record_host_key(target, seen["key"])
    log.info("%s trusted host key %s of %s (%s at %s) in %s", rt.ctx, seen["fingerprint"],
             what, target.alias, where, path)
    if name is None:
        rt.post(lc.ClearError())
    return {"profile": rt.name, "target": seen["target"], "alias": target.alias,
            "fingerprint": seen["fingerprint"], "path": path}
