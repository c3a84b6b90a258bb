"""`bastion-tray shell PROFILE HOST [-- CMD…]`: an SSH session to HOST through the bastion.

Runs the system `ssh` with `bastion-tray proxy` as its ProxyCommand, so the user's own agent
and ssh settings apply — except host keys: HOST's key is checked from the app's known_hosts
under its alias (``foo-appserver``) with ``StrictHostKeyChecking yes``, exactly as the daemon
checks the bastion, so nothing is accepted on first sight or written to ``~/.ssh``. An unknown
key is offered for trust first (on a terminal), like ``bastion-tray trust PROFILE HOST``.
A host with ``identity = "ec2-instance-connect"`` gets a key the daemon pushed just before, lent
through its private agent socket (``IdentityAgent``) for as long as the session lasts: no key
file exists. Exits with ssh's exit code.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bastion_tray.cli import session
from bastion_tray.core.config import Config, HostConfig
from bastion_tray.core.errors import HostKeyError
from bastion_tray.core.paths import app_paths
from bastion_tray.core.trust import host_alias, lists_alias, openssh_options

SSH_FAILED = 255  # what ssh exits with when it fails itself (connection, host key, auth)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("shell", help="an SSH session to a host through the bastion")
    p.add_argument("profile")
    p.add_argument("host", help="a host of the profile's [hosts] tables")
    p.add_argument("-o", dest="ssh_options", action="append", default=[], metavar="OPTION",
                   help="extra ssh -o option (repeatable)")
    p.epilog = "Everything after -- is the command to run on HOST instead of a login shell."
    p.set_defaults(run=run)


def ssh_argv(ssh: str, config: Config, profile: str, host: HostConfig,
             options: list[str], command: list[str], agent: str | None = None) -> list[str]:
    """`agent`: the daemon's private agent socket holding a key just pushed to the host
    (ec2-instance-connect); ssh offers its one key first, before any key file."""
    argv = [ssh, "-o", f"ProxyCommand={session.proxy_command(config, profile)}"]
    for key, value in openssh_options(host_alias(profile, host.name),
                                      str(app_paths().known_hosts)):
        argv += ["-o", f"{key}={value}"]
    argv += ["-p", str(host.port), "-l", host.user]
    if agent is not None:
        argv += ["-o", f"IdentityAgent={agent}"]
    if host.identity_file:
        argv += ["-i", str(host.identity_file)]
    for option in options:
        argv += ["-o", option]
    argv.append(host.hostname)
    if command:
        argv += ["--", *command]
    return argv


def recorded(alias: str) -> bool:
    """Whether the app's known_hosts names `alias` (OpenSSH then does the real check)."""
    try:
        return lists_alias(app_paths().known_hosts.read_text(errors="replace"), alias)
    except OSError:
        return False


def make_known(client: Any, profile: str, host: HostConfig) -> None:
    """Before ssh meets an unknown host: offer its key for trust on a terminal, else say how."""
    from bastion_tray.cli.commands.trust import changed_error, trust_interactively

    if sys.stdin.isatty():
        print(f"{profile}: the host key of {host.name} is not trusted yet", file=sys.stderr)
        if trust_interactively(client, profile, host.name) != 0:
            raise HostKeyError(f"the host key of {host.name} was not trusted; not connecting")
        return
    key = client.request("hostkey", profile=profile, host=host.name)
    if key.get("status") == "changed":
        raise changed_error(key)
    if key.get("status") == "unknown" and (key.get("console") or {}).get("outcome") == "verified":
        # the instance's console output vouches for it: no question to ask, on a terminal or not
        reply = client.request("trust", profile=profile, host=host.name,
                               fingerprint=key["fingerprint"])
        print(f"{profile}: the host key of {host.name} ({key['fingerprint']}) was verified from "
              f"the console output; recorded as {reply.get('alias', key.get('alias'))}",
              file=sys.stderr)
        return
    if key.get("status") != "trusted" or not key.get("recorded", True):
        raise HostKeyError(
            f"unknown host key for host {host.name} ({key['alias']} at {key['host']}:"
            f"{key['port']}, profile {profile}): {key['fingerprint']}",
            fingerprint=key["fingerprint"],
            hint=f"verify it, then run: bastion-tray trust {profile} {host.name}")


def explain_failure(client: Any, profile: str, host: HostConfig) -> None:
    """ssh failed on its own: if it was the host key, say so with both fingerprints."""
    from bastion_tray.cli.commands.trust import changed_error

    try:
        key = client.request("hostkey", profile=profile, host=host.name)
    except Exception:  # the explanation is a courtesy; ssh already said what it saw
        return
    if key.get("status") == "changed":
        print(f"bastion-tray: error: {changed_error(key)}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import shutil
    import subprocess  # here, not at the top: every command builds the parser with this module

    config = session.load(args)
    profile = session.profile_arg(config, args.profile)
    host = profile.host(args.host)  # exit 2 listing the known hosts
    progress = session.ProgressPrinter()
    lent: Any = None  # ec2-instance-connect: the daemon serves the pushed key while it is open
    with session.connect(config) as client:  # bring it up first, with progress, before ssh
        session.request(client, "start", profile, on_event=progress)
        progress.done()
        if not recorded(host_alias(profile.name, host.name)):
            make_known(client, profile.name, host)
        if host.instance_connect:  # pushed last: the key is valid 60 s from now
            lent, answer = client.hold("lend-key", profile=profile.name, host=host.name)
    try:
        agent = answer["agent"] if lent is not None else None
        ssh = shutil.which("ssh")
        if ssh is None:
            from bastion_tray.cli.fallback_shell import run_fallback_shell

            return run_fallback_shell(config, profile.name, host, args.trailing, agent)
        code = subprocess.call(ssh_argv(ssh, config, profile.name, host, args.ssh_options,
                                        args.trailing, agent))
    finally:
        if lent is not None:
            lent.close()
    if code == SSH_FAILED:
        with session.connect(config) as client:
            explain_failure(client, profile.name, host)
    return code
