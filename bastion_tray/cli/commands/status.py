"""`bastion-tray status [--json]`: every profile's state.

`--json` prints the daemon's reply as it came (the documented contract); the human form
reads it into core.status's typed `Status` and leads with the same status line as the tray.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from bastion_tray.cli import session

# core.status and core.statusline are imported where they are used: every command builds the
# parser with this module, and only `status` reads a status
if TYPE_CHECKING:
    from bastion_tray.core.config import Config
    from bastion_tray.core.status import ProfileStatus


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="show every profile's state")
    p.add_argument("--json", action="store_true", help="machine-readable (the documented contract)")
    p.set_defaults(run=run)


def describe(name: str, p: ProfileStatus, warn_before: float | None = None) -> list[str]:
    """The status line, then what stands behind it: the instance, idle clock, forwards, error."""
    from bastion_tray.core.statusline import human_duration, status_line

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
    lines += team_lines(p)
    if p.error is not None:
        lines.append(f"  error: {p.error.message}")
        if p.error.hint:
            lines.append(f"    → {p.error.hint}")
    return lines


def team_lines(p: ProfileStatus) -> list[str]:
    """Who else keeps it up, our lease, and when the backstop would stop it (or why not)."""
    from bastion_tray.core.statusline import human_duration

    lines = []
    if p.waiting_for_others:
        others = [*p.in_use_by]
        if p.other_sessions:
            others.append(f"{p.other_sessions} SSH connection"
                          f"{'s' if p.other_sessions != 1 else ''} on the bastion")
        lines.append(f"  in use by {', '.join(others) or 'others'}: it stops once they are "
                     "gone")
    lease = p.extra.get("lease")
    if isinstance(lease, dict):
        if lease.get("error"):
            lines.append(f"  lease: {lease['error']}")
        elif lease.get("held"):
            lines.append(f"  lease of {p.extra.get('user_id', 'this user')}: until "
                         f"{lease.get('until')}")
    backstop = p.extra.get("backstop")
    if isinstance(backstop, dict):
        state, reason = backstop.get("state"), backstop.get("reason")
        if state == "armed":
            left = backstop.get("fires_in_seconds")
            when = f" (in {human_duration(left)})" if isinstance(left, int | float) else ""
            lines.append(f"  backstop: stops it at {backstop.get('fires_at')}{when} unless "
                         "someone still uses it")
        elif state in ("off", "error"):
            lines.append(f"  backstop: {state} — {reason}")
    return lines


def run(args: argparse.Namespace) -> int:
    from bastion_tray.core.status import Status

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
