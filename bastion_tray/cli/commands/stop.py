"""`stop PROFILE` (now), `keep PROFILE [DURATION]` (postpone the idle stop), `shutdown`."""

from __future__ import annotations

import argparse

from bastion_tray.cli import session


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("stop", help="close the profile's forwards and sessions, stop the instance")
    p.add_argument("profile")
    p.set_defaults(run=run_stop)
    k = sub.add_parser("keep", help="postpone the idle stop (default 1h)")
    k.add_argument("profile")
    k.add_argument("duration", nargs="?", default="1h")
    k.set_defaults(run=run_keep)
    s = sub.add_parser("shutdown", help="stop the daemon (it stops the bastions it started)")
    s.set_defaults(run=run_shutdown)


def run_stop(args: argparse.Namespace) -> int:
    config = session.load(args)
    profile = session.profile_arg(config, args.profile)
    with session.connect(config) as client:
        reply = client.request("stop", profile=profile.name)
    print(f"{profile.name}: {reply['state']}")
    return 0


def run_keep(args: argparse.Namespace) -> int:
    config = session.load(args)
    profile = session.profile_arg(config, args.profile)
    with session.connect(config) as client:
        snap = client.request("keep", profile=profile.name, duration=args.duration)
    stops = snap.get("stops_in_seconds")
    print(f"{profile.name}: kept running" + (f", stops in {stops:.0f} s if idle" if stops else ""))
    return 0


def run_shutdown(args: argparse.Namespace) -> int:
    from bastion_tray.core.paths import app_paths
    from bastion_tray.service.control_client import ControlClient

    with ControlClient.connect(app_paths()) as client:
        reply = client.request("shutdown")
    print(f"daemon (pid {reply['pid']}) is shutting down")
    return 0
