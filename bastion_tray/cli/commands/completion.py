"""`bastion-tray completion bash|zsh|tcsh|fish`: a shell completion script, made by shtab from
this very parser (so it always knows every subcommand and option), that also completes profile
names: the script asks `bastion-tray completion --profiles`, which reads the config file only."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bastion_tray.core.errors import UsageError

SHELLS = ("bash", "zsh", "tcsh", "fish")  # what shtab writes; fish needs a shtab that has it
#: what the script runs to list profiles: $BASTION_TRAY_CONFIG is honoured, errors are silent
LIST_PROFILES = "bastion-tray completion --profiles 2>/dev/null"
#: the commands whose PROFILE is an existing profile (init's names a new one)
NEW_PROFILE_COMMANDS = frozenset({"init"})
#: shtab's `.complete` for a PROFILE argument, per shell
PROFILE_COMPLETE: dict[str, Any] = {
    "bash": "_bastion_tray_profiles",
    "zsh": f"($({LIST_PROFILES}))",
    "tcsh": f"`{LIST_PROFILES}`",
    "fish": f"({LIST_PROFILES})",
}
#: the bash function named above, handed to shtab as the script's preamble (a preamble inside
#: `.complete` is only read by newer shtabs)
BASH_PREAMBLE = ("_bastion_tray_profiles() {\n"
                 f'  compgen -W "$({LIST_PROFILES})" -- "$1"\n'
                 "}\n")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "completion", help="print a shell completion script (bash, zsh, tcsh or fish)",
        description="Print a completion script for SHELL. bash: "
                    'eval "$(bastion-tray completion bash)" in ~/.bashrc; zsh: '
                    "bastion-tray completion zsh > a file named _bastion-tray in $fpath; "
                    "fish: bastion-tray completion fish > "
                    "~/.config/fish/completions/bastion-tray.fish.")
    p.add_argument("shell", nargs="?", choices=SHELLS)
    # what the scripts call to complete PROFILE; not for people
    p.add_argument("--profiles", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.profiles:
        return print_profiles(args)
    if args.shell is None:
        raise UsageError(f"completion: which shell? one of {', '.join(SHELLS)}",
                         hint='e.g. eval "$(bastion-tray completion bash)"')
    import shtab  # only here: it is slow to import, and only this command needs it

    from bastion_tray.cli.main import build_parser  # lazily: main imports the commands

    if args.shell not in shtab.SUPPORTED_SHELLS:
        raise UsageError(f"this shtab ({shtab.__version__}) cannot write {args.shell} "
                         f"completion; it has {', '.join(shtab.SUPPORTED_SHELLS)}",
                         hint="upgrade it: pip install -U shtab")
    parser = build_parser()
    mark_profile_arguments(parser)
    preamble = BASH_PREAMBLE if args.shell == "bash" else ""
    sys.stdout.write(shtab.complete(parser, shell=args.shell, preamble=preamble))
    sys.stdout.flush()
    return 0


def mark_profile_arguments(parser: argparse.ArgumentParser) -> list[str]:
    """Give every subcommand's PROFILE positional the profile completer; the commands marked."""
    marked = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, subparser in action.choices.items():
            if name in NEW_PROFILE_COMMANDS:
                continue
            for arg in subparser._actions:
                if not arg.option_strings and arg.dest == "profile":
                    arg.complete = PROFILE_COMPLETE  # type: ignore[attr-defined]
                    marked.append(name)
    return marked


def print_profiles(args: argparse.Namespace) -> int:
    """One profile name a line, from the config file as every command finds it; nothing (and
    exit 0) when there is none: a completion must never print an error into the prompt."""
    from bastion_tray.core.config import profile_names
    from bastion_tray.core.paths import config_path

    path, _ = config_path(args.config)
    for name in profile_names(path):
        print(name)
    return 0
