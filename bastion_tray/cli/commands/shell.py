"""`bastion-tray shell PROFILE HOST [-- CMD…]`: an SSH session to HOST through the bastion.

Runs the system `ssh` with `bastion-tray proxy` as its ProxyCommand, so the user's own ssh
settings, agent and known_hosts apply; exits with ssh's exit code.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess

from bastion_tray.cli import session
from bastion_tray.core.config import Config, HostConfig


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("shell", help="an SSH session to a host through the bastion")
    p.add_argument("profile")
    p.add_argument("host", help="a host of the profile's [hosts] tables")
    p.add_argument("-o", dest="ssh_options", action="append", default=[], metavar="OPTION",
                   help="extra ssh -o option (repeatable)")
    p.epilog = "Everything after -- is the command to run on HOST instead of a login shell."
    p.set_defaults(run=run)


def ssh_argv(ssh: str, config: Config, profile: str, host: HostConfig,
             options: list[str], command: list[str]) -> list[str]:
    argv = [ssh, "-o", f"ProxyCommand={session.proxy_command(config, profile)}",
            "-p", str(host.port), "-l", host.user]
    if host.identity_file:
        argv += ["-i", str(host.identity_file)]
    for option in options:
        argv += ["-o", option]
    argv.append(host.hostname)
    if command:
        argv += ["--", *command]
    return argv


def run(args: argparse.Namespace) -> int:
    config = session.load(args)
    profile = session.profile_arg(config, args.profile)
    host = profile.host(args.host)  # exit 2 listing the known hosts
    progress = session.ProgressPrinter()
    with session.connect(config) as client:  # bring it up first, with progress, before ssh
        session.request(client, "start", profile, on_event=progress)
    progress.done()
    ssh = shutil.which("ssh")
    if ssh is None:
        from bastion_tray.cli.fallback_shell import run_fallback_shell

        return run_fallback_shell(config, profile.name, host, args.trailing)
    return subprocess.call(ssh_argv(ssh, config, profile.name, host, args.ssh_options,
                                    args.trailing))
