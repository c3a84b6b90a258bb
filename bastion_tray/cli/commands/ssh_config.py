"""`bastion-tray ssh-config PROFILE`: ~/.ssh/config blocks whose hosts go through the daemon."""

from __future__ import annotations

import argparse

from bastion_tray.cli import session
from bastion_tray.service.sshconfig import ssh_config_blocks


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ssh-config",
                       help="print ~/.ssh/config blocks that use `bastion-tray proxy`")
    p.add_argument("profile")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = session.load(args)
    text = ssh_config_blocks(config, session.profile_arg(config, args.profile))
    session.connect(config).close()  # the contract: every client command starts the daemon
    print(text, end="")
    return 0
