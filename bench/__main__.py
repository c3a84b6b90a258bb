"""`python -m bench`: start a sandbox, run both contenders against the same targets, report.

Per cipher and round, each contender (ssh -L, ours; the order alternates by round, since other
work on the machine drifts) gets: a download and an upload of --mib MiB, --sequential
connections timed to their first byte (once with a server that speaks first, like MySQL, once
with a client that does, like HTTP), and --concurrent connections open at once each doing one
echo round trip. The whole run is bounded by --budget seconds and stops every process it started.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import paramiko

from bastion_tray.core.netguard import ENV, install_audit_guard
from bench import measure
from bench.daemon import measure_daemon, render_daemon
from bench.net import child, python_module, raise_fd_limit, require_loopback
from bench.report import Samples, render
from bench.sides import LOCAL, Bastion, ours_forward, ssh_forward

RESULTS = Path(__file__).parent / "results" / "latest.md"
CIPHERS = ("aes128-ctr", "aes128-gcm@openssh.com")


class BudgetExceeded(Exception):
    pass


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise BudgetExceeded("the bench ran out of its time budget; partial results are dropped")


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--mib", type=int, default=256, help="MiB per transfer (256)")
    parser.add_argument("--sequential", type=int, default=200, help="connections timed (200)")
    parser.add_argument("--concurrent", type=int, default=500, help="open at once (500)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per contender (5)")
    parser.add_argument("--ciphers", default=",".join(CIPHERS))
    parser.add_argument("--budget", type=int, default=420, help="seconds for everything (420)")
    parser.add_argument("--idle-window", type=float, default=30.0,
                        help="seconds the idle daemon is watched (30)")
    parser.add_argument("--readiness-rounds", type=int, default=3,
                        help="cold starts timed through the real daemon (3)")
    return parser.parse_args(argv)


def _supported(ciphers: list[str]) -> list[str]:
    known = set(getattr(paramiko.Transport, "_preferred_ciphers", ()))
    return [c for c in ciphers if c in known]


def _measure(samples: Samples, ports: list[int], args: argparse.Namespace) -> None:
    cmd, banner = ports
    samples.download.append(measure.download(LOCAL, cmd, args.mib * measure.MiB))
    samples.upload.append(measure.upload(LOCAL, cmd, args.mib * measure.MiB))
    samples.banner_ms.append(measure.first_byte_ms(LOCAL, banner, args.sequential))
    samples.request_ms.append(measure.request_reply_ms(LOCAL, cmd, args.sequential))
    samples.served.append(measure.concurrent_round_trips(LOCAL, cmd, args.concurrent))


def _run(sandbox_dir: Path, args: argparse.Namespace, ciphers: list[str]
         ) -> tuple[dict[str, dict[str, Samples]], list[str]]:
    from bastion_tray.sandbox import Sandbox
    from bastion_tray.sandbox.net import pick_loopback_address

    results: dict[str, dict[str, Samples]] = {}
    with Sandbox.start(sandbox_dir) as sb:
        sb.ec2().start_instances(InstanceIds=[sb.bastion_instance_id])
        sb.wait_bastion_ssh(True, sb.boot_delay + 20)
        bastion = Bastion(require_loopback(sb.eip), sb.bastion_port, sb.user, sb.client_key,
                          sb.known_hosts)
        far = require_loopback(pick_loopback_address(
            random.Random(), {sb.eip, sb.db_host, sb.appserver_host, LOCAL}))
        with child(python_module("bench.targets", far)) as (_, line):
            targets = [(far, int(port)) for port in line.split()[1:]]
            for cipher in ciphers:
                sides = results[cipher] = {"ssh -L": Samples(), "ours": Samples()}
                for round_ in range(args.rounds):
                    order = [("ssh -L", ssh_forward), ("ours", ours_forward)]
                    for name, contender in order[::-1] if round_ % 2 else order:
                        with contender(bastion, cipher, targets, sandbox_dir) as side:
                            sides[name].negotiated = " + ".join(filter(None, (side.cipher,
                                                                              side.mac)))
                            _measure(sides[name], side.ports, args)
                    print(f"  {cipher} round {round_ + 1}/{args.rounds} done", flush=True)
        print("  the real daemon: readiness and idle cost", flush=True)
        daemon = measure_daemon(sb, rounds=args.readiness_rounds, idle_window=args.idle_window)
    return results, render_daemon(daemon, sb.boot_delay)


def _notes(args: argparse.Namespace, seconds: float, load: tuple[str, str]) -> list[str]:
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return [
        f"{time.strftime('%Y-%m-%d %H:%M')} on {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} CPUs, load average {load[0]} → {load[1]} (other work on the "
        "machine moves these numbers; the contenders alternate to share it fairly)",
        f"{ssh}; paramiko {paramiko.__version__}; Python {platform.python_version()}",
        f"{args.mib} MiB per transfer, {args.sequential} sequential connections, "
        f"{args.concurrent} concurrent, {args.rounds} rounds; loopback only; {seconds:.0f} s",
        "ours = Forward + Relay in a process of its own over one paramiko transport "
        "(bench/ours.py); ssh -L = OpenSSH client, same cipher, default MACs",
        "ours / ssh = median over rounds of each round's ratio (the pair runs back to back)",
    ]


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    os.environ[ENV] = "1"  # this process and every child: loopback only
    install_audit_guard()
    raise_fd_limit()
    ciphers = _supported([c for c in args.ciphers.split(",") if c])
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(args.budget)
    started, load_before = time.monotonic(), _load()
    print(f"bench: {', '.join(ciphers)}; up to {args.budget} s", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="bastion-tray-bench-") as tmp:
            results, daemon_rows = _run(Path(tmp), args, ciphers)
    except BudgetExceeded as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
    report = "# bench: ours vs ssh -L\n\n" + render(
        results, concurrent=args.concurrent,
        notes=_notes(args, time.monotonic() - started, (load_before, _load())),
        extra=daemon_rows)
    print(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)
    print(f"bench: written to {RESULTS}")
    return 0


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
