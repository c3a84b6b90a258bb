"""`bastion-tray status [--json]`: every profile's state."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bastion_tray.cli import session
from bastion_tray.core.durations import format_duration


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="show every profile's state")
    p.add_argument("--json", action="store_true", help="machine-readable (the documented contract)")
    p.set_defaults(run=run)


def describe(name: str, p: dict[str, Any]) -> list[str]:
    b = p["bastion"]
    head = f"{name}: {b['state']}"
    if b.get("host"):
        head += f" at {b['host']}"
    head += f", ssh {b['ssh']}"
    if p.get("phase"):
        head += f" — {p['phase']}…"
    lines = [head]
    active = sum(f["active_connections"] for f in p["forwards"].values()) + p["sessions"]
    if active:
        lines.append(f"  {active} connection{'s' if active > 1 else ''} open")
    elif p.get("stops_in_seconds") is not None:
        lines.append(f"  idle {format_duration(p['idle_seconds'] or 0)}, "
                     f"stops in {format_duration(p['stops_in_seconds'])}")
    for fname, f in p["forwards"].items():
        state = "listening" if f["listening"] else "closed"
        lines.append(f"  forward {fname}: {f['local']} → {f['remote']} ({state}, "
                     f"{f['active_connections']} active)")
    if p.get("error"):
        lines.append(f"  error: {p['error']['message']}")
        if p["error"].get("hint"):
            lines.append(f"    → {p['error']['hint']}")
    return lines


def run(args: argparse.Namespace) -> int:
    config = session.load(args)
    with session.connect(config) as client:
        status = client.request("status")
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    for name, profile in status["profiles"].items():
        print("\n".join(describe(name, profile)))
    if status.get("daemon", {}).get("config_changed"):
        print(f"note: {status['daemon']['config']} changed since the daemon read it; "
              "`bastion-tray shutdown` makes the next command start one with the new config")
    return 0
