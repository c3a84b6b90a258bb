"""`bastion-tray trust PROFILE [HOST]`: show a host key's fingerprint, record it if confirmed.

Without HOST it is the bastion's key; with HOST (a name of ``[profiles.P.hosts]``) the private
host's, fetched through the bastion. Either is recorded in the app's known_hosts under its alias
(``foo-bastion``, ``foo-appserver``), which the daemon, ``shell`` and the generated ssh config
all read; nothing is ever written to ``~/.ssh``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bastion_tray.cli import session
from bastion_tray.core.errors import HostKeyError, UsageError
from bastion_tray.core.trust import BASTION, normalize_fingerprint

CONSOLE_HINT = ("compare with the fingerprint in the instance's console output "
                "(EC2 → Actions → Monitor and troubleshoot → Get system log)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("trust", help="show a host key (the bastion's or a private host's) and "
                                     "record it after confirmation")
    p.add_argument("profile")
    p.add_argument("host", nargs="?", default=None,
                   help="a host of the profile's [hosts] tables (default: the bastion)")
    p.add_argument("--yes", action="store_true", help="record without asking")
    p.add_argument("--fingerprint", metavar="SHA256:…",
                   help="record only if the host presents exactly this key (the SHA256: prefix "
                        "may be left out)")
    p.set_defaults(run=run)


def expected_fingerprint(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return normalize_fingerprint(text)
    except ValueError as exc:
        raise UsageError(f"--fingerprint: {exc}") from None


def describe(key: dict[str, Any]) -> str:
    what = "bastion" if key.get("target", BASTION) == BASTION else f"host {key['target']}"
    alias = f" ({key['alias']})" if key.get("alias") else ""
    return f"{key['profile']}: {what}{alias} at {key['host']}:{key['port']}"


def confirm(key: dict[str, Any], *, yes: bool, expected: str | None) -> bool:
    """Whether to record `key`: --fingerprint must match; else --yes, else ask on a terminal."""
    if expected is not None:
        if expected != key["fingerprint"]:
            raise HostKeyError(f"{describe(key)} presents {key['fingerprint']}, not the "
                               f"expected {expected}; nothing was recorded",
                               fingerprint=key["fingerprint"], hint=CONSOLE_HINT)
        return True
    if yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError("not recording without confirmation",
                         hint="pass --yes, or --fingerprint SHA256:… to check it")
    answer = input("Trust this key? Compare it with the host's own fingerprint "
                   "(for an EC2 instance: its console output). [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def changed_error(key: dict[str, Any]) -> HostKeyError:
    known = "\n".join(f"  known:     {fp}" for fp in key.get("known") or ()) or "  known:     ?"
    return HostKeyError(
        f"HOST KEY CHANGED for {describe(key)}!\n{known}\n  presented: {key['fingerprint']}\n"
        "This could be an attack, or the machine was rebuilt and has a new host key. Nothing "
        "was recorded.", fingerprint=key["fingerprint"],
        hint=f"verify the new fingerprint, then remove the old line for {key['alias']} from "
             f"the app's known_hosts (ssh-keygen -R {key['alias']} -f FILE) and trust again")


def console_says(key: dict[str, Any], *, yes: bool, expected: str | None) -> bool:
    """Print what the instance's console output says of an unknown key; True when it vouches
    for it (record without asking). A key it does not list is recorded only after an explicit
    check: a typed --fingerprint or a "y" on the terminal, never --yes alone."""
    console = key.get("console") or {}
    outcome = console.get("outcome")
    instance = f" of instance {console['instance_id']}" if console.get("instance_id") else ""
    if outcome == "verified":
        print(f"verified from the console output{instance}")
        return True
    if outcome == "mismatch":
        listed = ", ".join(console.get("listed") or ())
        print(f"WARNING: the console output{instance} lists other host keys: {listed}\n"
              "This could be an attack (someone intercepting the connection), or the host's "
              "keys were replaced after its first boot.")
        if yes and expected is None:
            raise HostKeyError(f"{describe(key)} presents {key['fingerprint']}, which its "
                               "console output does not list; nothing was recorded",
                               fingerprint=key["fingerprint"],
                               hint="verify the key another way, then pass --fingerprint "
                                    f"{key['fingerprint']}")
    elif outcome:
        print(f"not verified from the console output: {console.get('reason')}")
    return False


def trust_interactively(client: Any, profile: str, host: str | None, *, yes: bool = False,
                        expected: str | None = None, progress: Any = None) -> int:
    """Fetch, show, confirm, record: the whole of `trust` (also `shell` on an unknown host)."""
    key = client.request("hostkey", profile=profile, host=host, on_event=progress)
    if progress is not None:
        progress.done()
    print(f"{describe(key)} presents\n  {key['fingerprint']}\n  {key['key']}")
    status = key.get("status", "unknown")
    if status == "changed":
        raise changed_error(key)
    if status == "revoked":
        raise HostKeyError(f"the host key of {describe(key)} is REVOKED: {key['fingerprint']}",
                           fingerprint=key["fingerprint"])
    if status == "trusted" and expected is not None:
        confirm(key, yes=yes, expected=expected)  # raises unless it is the expected key
    if status == "trusted" and key.get("recorded", True):
        print("already trusted")
        return 0
    # trusted only under its address (an older version, ~/.ssh/known_hosts): the same key, now
    # recorded under the alias that OpenSSH clients look up — no question to ask again
    vouched = status == "unknown" and console_says(key, yes=yes, expected=expected)
    if vouched and expected is not None:
        confirm(key, yes=yes, expected=expected)  # raises unless it is the expected key
    if status != "trusted" and not vouched and not confirm(key, yes=yes, expected=expected):
        print("not recorded")
        return 1
    reply = client.request("trust", profile=profile, host=host,
                           fingerprint=key["fingerprint"])
    print(f"recorded as {reply.get('alias', key.get('alias'))} in {reply['path']}")
    return 0


def run(args: argparse.Namespace) -> int:
    config = session.load(args)
    profile = session.profile_arg(config, args.profile)
    host = None if args.host in (None, BASTION) else profile.host(args.host).name
    expected = expected_fingerprint(args.fingerprint)
    with session.connect(config) as client:
        return trust_interactively(client, profile.name, host, yes=args.yes, expected=expected,
                                   progress=session.ProgressPrinter())
