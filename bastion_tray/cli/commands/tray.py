"""`bastion-tray tray`: the tray icon and menu, a client of the daemon (started when none runs)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from bastion_tray.cli import session
from bastion_tray.cli.logs import configure_logging
from bastion_tray.core.paths import app_paths, ensure_private_dir

if TYPE_CHECKING:
    from bastion_tray.service.control_client import ControlClient


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("tray", help="the tray icon and menu (starts the daemon when none runs)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bastion_tray.ui.tray import run_tray

    config = session.load(args)  # a broken config fails here, with exit 2, not in the menu
    paths = app_paths()
    ensure_private_dir(paths.log_dir)
    # started at login, nobody reads its stderr: keep a log next to the daemon's
    configure_logging(args.verbose, logfile=paths.log_dir / "tray.log")

    def connect() -> ControlClient:
        return session.connect(session.load(args), paths)  # re-read: the config may change

    return run_tray(config.path, paths, connect)
