"""`stop PROFILE` (now), `keep PROFILE [DURATION]` (postpone the idle stop), `shutdown`."""

from __future__ import annotations

import argparse
import contextlib

from bastion_tray.cli import session
from bastion_tray.core.durations import (
    KEEP_LIMIT,
    format_duration,
    parse_bounded_duration,
    parse_duration,
)
from bastion_tray.core.errors import UsageError
from bastion_tray.core.text import clip

DEFAULT_KEEP = "1h"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("stop", help="close the profile's forwards and sessions, stop the instance "
                                    "(refused while teammates use it, unless --force)")
    p.add_argument("profile")
    p.add_argument("--force", action="store_true",
                   help="stop it even while others use the bastion (it cuts them off)")
    p.set_defaults(run=run_stop)
    # what is printed is humanized by format_duration ("1 h", "7 d"); only the input syntax is
    # shown as typed
    default = format_duration(parse_duration(DEFAULT_KEEP))
    k = sub.add_parser("keep", help=f"postpone the idle stop (default {default}, at most "
                                     f"{format_duration(KEEP_LIMIT)})")
    k.add_argument("profile")
    k.add_argument("duration", nargs="?", default=None,
                   help=f'how long: "90s", "30m", "2h" or seconds (default {default}, at most '
                        f'{format_duration(KEEP_LIMIT)})')
    k.set_defaults(run=run_keep)
    s = sub.add_parser("shutdown", help="stop the daemon (it stops the bastions it started)")
    s.set_defaults(run=run_shutdown)


def run_stop(args: argparse.Namespace) -> int:
    config = session.load(args)
    profile = session.profile_arg(config, args.profile)
    with session.connect(config) as client:
        reply = client.request("stop", profile=profile.name, force=args.force)
    print(f"{profile.name}: {reply['state']}")
    return 0


def keep_seconds(args: argparse.Namespace) -> float:
    """The duration `keep` was given, checked here: a bad one is exit 2 before any daemon is
    asked (or started) — "99999999999999999999h" once stopped the idle stop for good."""
    given = [args.duration] if args.duration is not None else []
    given += args.trailing  # `keep foo -- -5m`: main() hands what follows "--" to the command
    if len(given) > 1:
        raise UsageError(f"keep: one duration, got {len(given)}: {clip(' '.join(given))}")
    text = given[0] if given else DEFAULT_KEEP
    try:
        return parse_bounded_duration(text, maximum=KEEP_LIMIT, what="keep")
    except ValueError as exc:
        hint = None
        with contextlib.suppress(ValueError):
            parse_duration(text)  # a duration, only too long: say what to do instead
            hint = f"to keep it running for longer, set auto_stop = false in " \
                   f"[profiles.{clip(args.profile)}.bastion]"
        raise UsageError(str(exc), hint=hint) from None


def run_keep(args: argparse.Namespace) -> int:
    config = session.load(args)
    profile = session.profile_arg(config, args.profile)
    seconds = keep_seconds(args)
    with session.connect(config) as client:
        snap = client.request("keep", profile=profile.name, duration=seconds)
    print(f"{profile.name}: {kept_message(snap, seconds)}")
    return 0


def kept_message(snap: dict[str, object], asked: float) -> str:
    """What `keep` prints after the profile's name, in format_duration's one style: the
    countdown rounded up as the daemon reports it ("kept running; stops in 1 h")."""
    stops = snap.get("stops_in_seconds")
    if isinstance(stops, int | float) and not isinstance(stops, bool):
        return f"kept running; stops in {format_duration(stops, round_up=True)}"
    if snap.get("auto_stop") is False:
        return "kept running; auto-stop is off, it runs until you stop it"
    # in use now: the countdown starts once idle, and ends no sooner than what was asked
    return (f"kept running; in use now, stops no sooner than in "
            f"{format_duration(asked, round_up=True)}")


def run_shutdown(args: argparse.Namespace) -> int:
    """Ask the running daemon to stop; with none running, say so (exit 0) and start nothing."""
    from bastion_tray.service.clientside import connect_running

    client = connect_running()
    if client is None:
        print("no daemon running")
        return 0
    with client:
        reply = client.request("shutdown")
    print(f"daemon (pid {reply['pid']}) is shutting down")
    return 0
