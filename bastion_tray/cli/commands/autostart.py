"""`bastion-tray autostart --enable/--disable`: start the tray at login (or stop doing so)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bastion_tray.cli import session


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("autostart", help="start the tray at login: an XDG autostart entry "
                                         "(Linux), a LaunchAgent (macOS), a Startup-folder "
                                         "script (Windows)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--enable", action="store_true", help="write the login entry")
    mode.add_argument("--disable", action="store_true", help="remove it")
    p.add_argument("--dir", type=Path, metavar="DIR",
                   help="write into DIR instead of the platform's autostart folder")
    p.add_argument("--kind", choices=["xdg", "launchagent", "startup"],
                   help="the kind of entry (default: this platform's)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bastion_tray.ui import autostart

    strategy = autostart.strategy_for(name=args.kind)
    directory = args.dir or strategy.default_dir(os.environ)
    if args.disable:
        removed = strategy.disable(directory)
        print(f"removed {removed}" if removed else
              f"autostart was not enabled (no {strategy.path(directory)})")
        return 0
    if args.enable:
        config = session.load(args)  # never point the login entry at a broken config
        path = strategy.enable(directory, autostart.tray_argv(config.path),
                               autostart.carried_env())
        print(f"wrote {path}: the tray starts at your next login")
        return 0
    target = strategy.path(directory)
    print(f"autostart is {'enabled' if target.exists() else 'disabled'} ({target})")
    return 0
