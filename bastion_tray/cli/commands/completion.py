"""`bastion-tray completion bash|zsh|tcsh|fish`: a shell completion script, made by shtab from
this very parser (so it always knows every subcommand and option)."""

from __future__ import annotations

import argparse
import sys

from bastion_tray.core.errors import UsageError

SHELLS = ("bash", "zsh", "tcsh", "fish")  # what shtab writes; fish needs a shtab that has it


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "completion", help="print a shell completion script (bash, zsh, tcsh or fish)",
        description="Print a completion script for SHELL. bash: "
                    'eval "$(bastion-tray completion bash)" in ~/.bashrc; zsh: '
                    "bastion-tray completion zsh > a file named _bastion-tray in $fpath.")
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import shtab  # only here: it is slow to import, and only this command needs it

    from bastion_tray.cli.main import build_parser  # lazily: main imports the commands

    if args.shell not in shtab.SUPPORTED_SHELLS:
        raise UsageError(f"this shtab ({shtab.__version__}) cannot write {args.shell} "
                         f"completion; it has {', '.join(shtab.SUPPORTED_SHELLS)}",
                         hint="upgrade it: pip install -U shtab")
    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    sys.stdout.flush()
    return 0
