"""`up PROFILE` (bastion, SSH, every forward) and `connect PROFILE FORWARD` (one forward)."""

from __future__ import annotations

import argparse

from bastion_tray.cli import session


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("up", help="start the bastion, connect SSH, open every forward")
    p.add_argument("profile")
    p.set_defaults(run=run_up)
    c = sub.add_parser("connect", help="open one forward (starting what it needs); "
                                       "prints its local address")
    c.add_argument("profile")
    c.add_argument("forward")
    c.add_argument("--lazy", action="store_true",
                   help="only listen; the first connection starts the bastion")
    c.set_defaults(run=run_connect)


def run_up(args: argparse.Namespace) -> int:
    config = session.load(args)
    profile = session.profile_arg(config, args.profile)
    progress = session.ProgressPrinter()
    with session.connect(config) as client:
        snap = session.request(client, "up", profile, on_event=progress)
    progress.done(f"{profile.name}: ready ({snap['bastion']['host']})")
    for name, f in snap["forwards"].items():
        print(f"{name}: {f['local']} → {f['remote']}")
    return 0


def run_connect(args: argparse.Namespace) -> int:
    config = session.load(args)
    profile = session.profile_arg(config, args.profile)
    profile.forward(args.forward)  # exit 2 listing the known forwards
    progress = session.ProgressPrinter()
    with session.connect(config) as client:
        reply = session.request(client, "connect", profile, forward=args.forward,
                               lazy=args.lazy, on_event=progress)
    progress.done()
    print(reply["local"])
    return 0
