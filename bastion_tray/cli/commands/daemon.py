"""`bastion-tray daemon`: run the daemon in the foreground until SIGTERM/SIGINT (exit 0)."""

from __future__ import annotations

import argparse
import logging
import signal
from types import FrameType

from bastion_tray.cli import session
from bastion_tray.cli.logs import configure_logging
from bastion_tray.core.paths import app_paths, ensure_private_dir


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("daemon", help="run the daemon in the foreground")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bastion_tray.cli.wiring import real_adapters
    from bastion_tray.service.daemon import Daemon

    config = session.load(args)
    paths = app_paths()
    ensure_private_dir(paths.log_dir)
    configure_logging(args.verbose, logfile=paths.daemon_log)
    daemon = Daemon(config, paths, real_adapters(config, paths))

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("bastion_tray.daemon").info("signal %d: shutting down", signum)
        daemon.request_shutdown()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with daemon:
        daemon.wait()
    return 0
