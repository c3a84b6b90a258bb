"""`bastion-tray check-config`: print what the config says, or every problem in it (exit 2)."""

from __future__ import annotations

import argparse

from bastion_tray.core.config import Config, load_config
from bastion_tray.core.durations import format_duration
from bastion_tray.core.paths import config_path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check-config", help="validate the config file and show the profiles")
    p.set_defaults(run=run)


def load(args: argparse.Namespace) -> Config:
    path, source = config_path(args.config)
    return load_config(path, source)


def describe(config: Config) -> list[str]:
    lines = [f"{config.path}: OK, {len(config.profiles)} profile(s)"]
    for p in config.profiles.values():
        b = p.bastion
        stop = f"auto-stop after {format_duration(b.idle_timeout)} idle" if b.auto_stop \
            else "auto-stop off"
        lines.append(f"  {p.name}: region {p.region}"
                     + (f", AWS profile {p.aws_profile}" if p.aws_profile else ""))
        lines.append(f"    bastion {b.label} as {b.user}@{b.host}:{b.port}, {stop}")
        for h in p.hosts.values():
            lines.append(f"    host {h.name}: {h.user}@{h.hostname}:{h.port}")
        for f in p.forwards.values():
            lines.append(f"    forward {f.name}: {f.local} → {f.remote_host}:{f.remote_port}")
    return lines


def run(args: argparse.Namespace) -> int:
    print("\n".join(describe(load(args))))
    return 0
