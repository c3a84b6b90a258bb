"""Entry point: parse the command line, dispatch, map errors to exit codes. It only wires."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bastion_tray import __version__
from bastion_tray.cli import commands
from bastion_tray.core.errors import BastionTrayError
from bastion_tray.core.netguard import install_audit_guard, loopback_only

log = logging.getLogger("bastion_tray")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bastion-tray",
        description="Start a stopped AWS bastion on demand, tunnel through it, stop it when idle.",
    )
    parser.add_argument("--version", action="version", version=f"bastion-tray {__version__}")
    parser.add_argument(
        "--config", metavar="PATH",
        help="config file (default: $BASTION_TRAY_CONFIG, else the user config dir)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands.ALL:
        command.register(sub)
    for subparser in sub.choices.values():  # `bastion-tray status -v` as well as `-v status`
        subparser.add_argument("-v", "--verbose", dest="verbose_sub", action="count", default=0,
                               help="more log output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if loopback_only():
        install_audit_guard()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # everything after "--" belongs to the command (shell's remote CMD), never to argparse
    tail = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:len(argv) - len(tail) - (1 if "--" in argv else 0)])
    args.trailing = tail
    args.verbose = int(args.verbose or 0) + int(getattr(args, "verbose_sub", 0) or 0)
    from bastion_tray.cli.logs import configure_logging

    configure_logging(args.verbose)
    try:
        return int(args.run(args) or 0)
    except BastionTrayError as exc:
        print(f"bastion-tray: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bastion-tray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
