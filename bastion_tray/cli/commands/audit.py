"""`bastion-tray audit PROFILE [--json]`: the profile's VPC against the seed's posture.

Runs in the CLI process (read-only AWS describes; no daemon). Exit 1 when a check fails, 0
otherwise (warnings do not fail), 2 for a usage or configuration error. `init` prints the same
report at its end, and a failure there is a line, not init's failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bastion_tray.cli import session
from bastion_tray.core.errors import BastionTrayError

# boto3 (adapters/posture.py) costs ~120 ms: imported only when audit runs
if TYPE_CHECKING:
    from bastion_tray.core.audit import Report
    from bastion_tray.core.config import Profile

_INDENT = " " * 6


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="check the profile's VPC against the seed's security "
                                     "posture (exit 1 on a fail)",
                       description="Read-only checks of the bastion's security groups, the app "
                       "servers', RDS, IMDSv2, the Elastic IP's cost and the config; each "
                       "pass/warn/fail with what was seen and the command that fixes it.")
    p.add_argument("profile")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.set_defaults(run=run)


def report_for(profile: Profile) -> Report:
    from bastion_tray.adapters.posture import read_posture
    from bastion_tray.core.audit import audit

    return audit(read_posture(profile))


def human(report: Report) -> list[str]:
    where = " in ".join(x for x in (report.bastion, report.vpc_id) if x)
    lines = [f"audit of {report.profile}" + (f": bastion {where}" if where else "")]
    for check in report.checks:
        lines.append(f"{check.status.upper():<4}  {check.id:<24} {check.seen}")
        if check.fix and check.status != "pass":
            first, *rest = check.fix.splitlines()
            lines.append(f"{_INDENT}fix: {first}")
            lines += [f"{_INDENT}     {line}" for line in rest]
    counts = report.counts()
    failed = [c.id for c in report.checks if c.status == "fail"]
    lines.append(f"{report.profile}: {counts['pass']} pass, {counts['warn']} warn, "
                 f"{counts['fail']} fail" + (f" ({', '.join(failed)})" if failed else ""))
    return lines


def run(args: argparse.Namespace) -> int:
    config = session.load(args)
    report = report_for(session.profile_arg(config, args.profile))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(human(report)))
    return report.exit_code


def after_init(path: Path, source: str, name: str) -> None:
    """init's last step: the new profile's audit, printed. Never changes init's outcome."""
    from bastion_tray.core.config import load_config

    try:
        report = report_for(load_config(path, source).profile(name))
    except BastionTrayError as exc:
        print(f"note: audit not run: {exc}", file=sys.stderr)
        return
    print("\n" + "\n".join(human(report)))
