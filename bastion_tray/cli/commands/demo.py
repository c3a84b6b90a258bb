"""`bastion-tray demo`: the whole flow on a simulated VPC, no AWS account needed."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the product on a simulated VPC (no AWS account needed)")
    p.add_argument("--headless", action="store_true",
                   help="no tray even where there is a display: a live status line instead")
    p.add_argument("--boot-delay", type=float, default=4.0, metavar="SECONDS",
                   help="how long the simulated bastion takes to boot after its start (4)")
    p.add_argument("--idle-timeout", default="60s", help="the demo profile's idle timeout (60s)")
    p.add_argument("--duration", type=float, metavar="SECONDS",
                   help="stop by itself after this long (for scripts)")
    p.add_argument("--standins", action="store_true",
                   help="use the built-in stand-ins even where sshd and MariaDB are installed")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bastion_tray.sandbox.demo import main

    return main(boot_delay=args.boot_delay, idle_timeout=args.idle_timeout,
                headless=args.headless, duration=args.duration,
                standins=True if args.standins else None)
