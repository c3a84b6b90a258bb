"""`bastion-tray trust PROFILE`: show the bastion host-key fingerprint, record it if confirmed."""

from __future__ import annotations

import argparse
import sys

from bastion_tray.cli import session
from bastion_tray.core.errors import HostKeyError, UsageError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("trust", help="show the bastion's host key and record it after confirmation")
    p.add_argument("profile")
    p.add_argument("--yes", action="store_true", help="record without asking")
    p.add_argument("--fingerprint", metavar="SHA256:…",
                   help="record only if the bastion presents exactly this key")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = session.load(args)
    profile = session.profile_arg(config, args.profile)
    progress = session.ProgressPrinter()
    with session.connect(config) as client:
        key = client.request("hostkey", profile=profile.name, on_event=progress)
        progress.done()
        print(f"{profile.name}: bastion {key['host']}:{key['port']} presents\n"
              f"  {key['fingerprint']}\n  {key['key']}")
        if args.fingerprint and args.fingerprint != key["fingerprint"]:
            raise HostKeyError(f"the bastion presents {key['fingerprint']}, not the expected "
                               f"{args.fingerprint}; nothing was recorded",
                               fingerprint=key["fingerprint"],
                               hint="compare with the fingerprint in the instance's console "
                                    "output (EC2 → Actions → Monitor → Get system log)")
        if not (args.yes or args.fingerprint):
            if not sys.stdin.isatty():
                raise UsageError("not recording without confirmation",
                                 hint="pass --yes, or --fingerprint SHA256:… to check it")
            answer = input("Trust this key? Compare it with the instance's console output. "
                           "[y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("not recorded")
                return 1
        reply = client.request("trust", profile=profile.name, fingerprint=key["fingerprint"])
    print(f"recorded in {reply['path']}")
    return 0
