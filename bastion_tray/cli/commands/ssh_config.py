"""`bastion-tray ssh-config [PROFILE] [--json | --install]`: ~/.ssh/config blocks whose hosts go
through the daemon (every profile when none is named)."""

from __future__ import annotations

import argparse
import json

from bastion_tray.cli import session


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ssh-config",
                       help="print (or --install) ~/.ssh/config blocks that use "
                            "`bastion-tray proxy`")
    p.add_argument("profile", nargs="?", default=None, help="default: every profile")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="the host list as JSON")
    mode.add_argument("--install", action="store_true",
                      help="write them to ~/.ssh/bastion-tray.conf and Include that file at "
                           "the top of ~/.ssh/config (idempotent, with a backup)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bastion_tray.service.sshconfig import ssh_config_blocks, ssh_hosts  # only when it runs

    config = session.load(args)
    profiles = ([session.profile_arg(config, args.profile)] if args.profile
                else list(config.profiles.values()))
    if args.json:
        hosts = [h.to_json() for p in profiles for h in ssh_hosts(config, p)]
        text = json.dumps({"hosts": hosts}, indent=2) + "\n"
    elif args.install:
        from bastion_tray.service.sshinstall import install

        done = install({p.name: ssh_config_blocks(config, p) for p in profiles})
        aliases = ", ".join(h.alias for p in profiles for h in ssh_hosts(config, p))
        text = (f"wrote {done.conf} ({aliases})\n"
                + (f"added `Include` to the top of {done.config}"
                   + (f" (backup: {done.backup})" if done.backup else "") + "\n"
                   if done.include_added else f"{done.config} already includes it\n"))
    else:
        text = "\n".join(ssh_config_blocks(config, p) for p in profiles)
    session.connect(config).close()  # the contract: every client command starts the daemon
    print(text, end="")
    return 0
