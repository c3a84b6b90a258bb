"""`bastion-tray status [--json]`: every profile's state.

`--json` prints the daemon's reply as it came (the documented contract); the human form
reads it into core.status's typed `Status` and leads with the same status line as the tray.
"""

from __future__ import annotations

import argparse
import json

from bastion_tray.cli import session
from bastion_tray.core.config import Config
from bastion_tray.core.status import ProfileStatus, Status, human_duration, status_line


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="show every profile's state")
    p.add_argument("--json", action="store_true", help="machine-readable (the documented contract)")
    p.set_defaults(run=run)


def describe(name: str, p: ProfileStatus, warn_before: float | None = None) -> list[str]:
    """The status line, then what stands behind it: the instance, idle clock, forwards, error."""
    b = p.bastion
    lines = [status_line(name, p, warn_before=warn_before)]
    where = f" at {b.host}" if b.host else ""
    lines.append(f"  instance {b.instance_id or '(not found)'}: {b.state}{where}, ssh {b.ssh}")
    if p.idle_seconds is not None:
        lines.append(f"  idle for {human_duration(p.idle_seconds)}")
    for fname, f in p.forwards.items():
        state = "listening" if f.listening else "closed"
        remote = f" → {f.remote}" if f.remote else ""
        lines.append(f"  forward {fname}: {f.local}{remote} ({state}, "
                     f"{f.active_connections} active)")
    if p.error is not None:
        lines.append(f"  error: {p.error.message}")
        if p.error.hint:
            lines.append(f"    → {p.error.hint}")
    return lines


def run(args: argparse.Namespace) -> int:
    config = session.load(args)
    with session.connect(config) as client:
        reply = client.request("status")
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
        return 0
    status = Status.from_json(reply)
    for name, profile in status.profiles.items():
        print("\n".join(describe(name, profile, warn_before_of(config, name))))
    if status.daemon is not None and status.daemon.config_changed:
        print(f"note: {status.daemon.config} changed since the daemon read it; "
              "`bastion-tray shutdown` makes the next command start one with the new config")
    return 0


def warn_before_of(config: Config, name: str) -> float | None:
    profile = config.profiles.get(name)
    return profile.warn_before if profile is not None else None
