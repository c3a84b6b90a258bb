"""Entry point: parse the command line, dispatch, map errors to exit codes. It only wires."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from bastion_tray import __version__
from bastion_tray.cli import commands
from bastion_tray.core.errors import BastionTrayError
from bastion_tray.core.netguard import install_audit_guard, loopback_only
from bastion_tray.core.text import clip

log = logging.getLogger("bastion_tray")
_LONG_WORD = re.compile(r"[^\s']{81,}")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error echoes at most a line of what was typed: each long word of
    the message is clipped (so "choose from ..." survives), then the whole of it."""

    def error(self, message: str) -> NoReturn:
        message = _LONG_WORD.sub(lambda m: clip(m.group(), 80), message)
        super().error(clip(message, 600))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="bastion-tray",
        description="Start a stopped AWS bastion on demand, tunnel through it, stop it when idle.",
    )
    parser.add_argument("--version", action="version", version=f"bastion-tray {__version__}")
    parser.add_argument(
        "--config", metavar="PATH",
        help="config file (default: $BASTION_TRAY_CONFIG, else the user config dir)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=Parser)
    for command in commands.ALL:
        command.register(sub)
    for subparser in sub.choices.values():  # `bastion-tray status -v` as well as `-v status`
        taken = [o for o in ("-v", "--verbose") if o in subparser._option_string_actions]
        if not taken:  # a command that gave -v a meaning of its own keeps it
            subparser.add_argument("-v", "--verbose", dest="verbose_sub", action="count",
                                   default=0, help="more log output (as -v before COMMAND)")
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
