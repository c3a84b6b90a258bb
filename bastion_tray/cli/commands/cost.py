"""`bastion-tray cost [PROFILE] [--json]`: the bastion's running hours today and this month and
what they cost, from the daemon's record of what it saw (service/usage.py, core/cost.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bastion_tray.cli import session


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("cost", help="running hours today / this month and an estimate in USD, "
                                    "from what the daemon saw")
    p.add_argument("profile", nargs="?", help="one profile (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = session.load(args)
    wanted = None if args.profile is None else session.profile_arg(config, args.profile).name
    with session.connect(config) as client:
        reply = (client.request("cost") if wanted is None
                 else client.request("cost", profile=wanted))
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
        return 0
    profiles: dict[str, Any] = reply.get("profiles", {})
    for name, figures in sorted(profiles.items()):
        print("\n".join(describe(name, figures)))
    if profiles:
        first = next(iter(profiles.values()))
        print(f"({first.get('note')}; prices of {first.get('price', {}).get('table_date')}, "
              "public IPv4 included)")
    return 0


def describe(name: str, c: dict[str, Any]) -> list[str]:
    """`foo  i-0abc  t3.micro ap-northeast-1  today 0.4 h $0.01 · this month 3.2 h $0.07`."""
    from bastion_tray.core.cost import hours_text, usd_text

    today, month = c.get("today", {}), c.get("month", {})
    lines = [f"{name}  {c.get('instance_id') or '(not seen)'}  "
             f"{c.get('instance_type') or '?'} {c.get('region')}  "
             f"today {hours_text(today.get('running_hours', 0.0))} {usd_text(today.get('usd'))}"
             f" · this month {hours_text(month.get('running_hours', 0.0))} "
             f"{usd_text(month.get('usd'))}"]
    if c.get("usd_unknown"):
        lines.append(f"  no USD: {c['usd_unknown']}")
    if c.get("since") is None:
        lines.append("  nothing recorded yet")
    return lines
