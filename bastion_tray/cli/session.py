"""What every client command shares: the config, the daemon (spawned when none runs), progress.

Starting and reaching the daemon live in service/clientside.py, below the CLI and the tray."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from bastion_tray.core.config import Config, Profile
from bastion_tray.core.paths import config_path

# the daemon's side of every client, shared with the tray and the demo (re-exported for the
# commands, which all say `session.connect(...)`)
from bastion_tray.service.clientside import connect as connect
from bastion_tray.service.clientside import proxy_command as proxy_command

if TYPE_CHECKING:
    from bastion_tray.service.control_client import ControlClient


def load(args: argparse.Namespace) -> Config:
    from bastion_tray.core.config import load_config

    path, source = config_path(args.config)
    return load_config(path, source)


def profile_arg(config: Config, name: str) -> Profile:
    return config.profile(name)  # UsageError (exit 2) listing the known profiles


def request(client: ControlClient, op: str, profile: Profile, **args: Any) -> dict[str, Any]:
    """`client.request`, asking for the key's passphrase on a terminal when the daemon needs it."""
    import getpass

    from bastion_tray.core.errors import PassphraseNeeded

    for attempt in range(3):
        try:
            return client.request(op, profile=profile.name, **args)
        except PassphraseNeeded as exc:
            if not sys.stdin.isatty() or attempt == 2:
                raise
            if exc.wrong:
                print("wrong passphrase, try again", file=sys.stderr)
            args["passphrase"] = getpass.getpass(
                f"Passphrase for {profile.bastion.identity_file}: ")
    raise AssertionError("unreachable")


class ProgressPrinter:
    """Prints the daemon's progress events on stderr: one line per phase, elapsed time."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.began = time.monotonic()
        self.last: tuple[str, str] | None = None
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("type") != "progress":
            return
        phase, detail = str(event.get("phase", "")), str(event.get("detail", ""))
        elapsed = time.monotonic() - self.began
        line = f"{event.get('profile', '')}: {phase}… {detail} [{elapsed:.0f} s]"
        if self.tty:
            end = "\n" if self.last and self.last[0] != phase else ""
            self.stream.write(f"{end}\r\033[K{line}")
        elif self.last is None or self.last[0] != phase:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.last = (phase, detail)

    def done(self, message: str | None = None) -> None:
        if self.tty and self.last is not None:
            self.stream.write("\n")
        if message:
            self.stream.write(message + "\n")
        self.stream.flush()
