"""`python -m bench`: start a sandbox, run every contender against the same targets, report.

Contenders: "ours" — the real daemon, spawned and driven by the real CLI (`bastion-tray connect
foo db` …), with the data plane it picks by default; "ours (paramiko)" — the same with
`[settings] data_plane = "paramiko"` (when the product has that key); "ssh -L" — the OpenSSH
client through the same bastion sshd with aes128-gcm@openssh.com; "direct" — no tunnel.
Measured: sysbench OLTP QPS and the tunnel's CPU per query, new MySQL connections per second,
bulk transfers and first-byte latency, scp and session setup through `bastion-tray ssh-config`'s
ProxyCommand vs `ssh -J`, CLI start-up, and the daemon's readiness and idle cost. Rounds
alternate the contenders' order. The whole run is bounded by --budget seconds and stops every
process it started.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from bastion_tray.core.netguard import ENV, install_audit_guard
from bench import mysql, suites
from bench.app import OurDaemon, data_plane_supported
from bench.daemon import measure_daemon, render_daemon
from bench.net import child, python_module, raise_fd_limit, require_loopback
from bench.openssh import JUMP_ALIAS, jump_config
from bench.procstat import tree_cpu_seconds
from bench.sides import LOCAL, Bastion, ssh_forward
from bench.suites import DIRECT, SSH, SSH_J, Contender, SshRoute
from bench.writeup import Results, write_results

CIPHER = "aes128-gcm@openssh.com"
OURS, PARAMIKO = "ours", "ours (paramiko)"


class BudgetExceeded(Exception):
    pass


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise BudgetExceeded("the bench ran out of its time budget; partial results are dropped")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds per contender (3)")
    p.add_argument("--sysbench-seconds", type=float, default=5, help="per sysbench run (5)")
    p.add_argument("--threads", type=lambda s: [int(t) for t in s.split(",")],
                   default=list(mysql.THREADS), help="sysbench thread counts (1,8,32)")
    p.add_argument("--conn-seconds", type=float, default=3, help="per connect loop (3)")
    p.add_argument("--mib", type=int, default=256, help="MiB per bulk transfer (256)")
    p.add_argument("--sequential", type=int, default=100, help="connections timed (100)")
    p.add_argument("--concurrent", type=int, default=500, help="open at once (500)")
    p.add_argument("--scp-mib", type=int, default=64, help="MiB copied by scp (64)")
    p.add_argument("--sessions", type=int, default=4, help="`ssh … true` per round (4)")
    p.add_argument("--startup-count", type=int, default=10, help="CLI runs timed (10)")
    p.add_argument("--budget", type=int, default=1200, help="seconds for everything (1200)")
    p.add_argument("--idle-window", type=float, default=30.0,
                   help="seconds the idle daemon is watched (30)")
    p.add_argument("--readiness-rounds", type=int, default=3,
                   help="cold starts timed through the real daemon (3)")
    return p.parse_args(argv)


def _ours(stack: contextlib.ExitStack, sb: Any, name: str, data_plane: str | None,
          far: dict[str, tuple[str, int]]) -> tuple[Contender, OurDaemon]:
    daemon = stack.enter_context(OurDaemon(sb, data_plane=data_plane, forwards=far))
    addresses = {forward: daemon.connect(forward) for forward in ("db", *far)}
    return Contender(name, addresses, daemon.cpu_seconds, daemon.describe()), daemon


def _run(workdir: Path, args: argparse.Namespace, results: Results) -> None:
    from bastion_tray.sandbox import Sandbox
    from bastion_tray.sandbox.net import pick_loopback_address

    with Sandbox.start(workdir / "sandbox") as sb, contextlib.ExitStack() as stack:
        sb.ec2().start_instances(InstanceIds=[sb.bastion_instance_id])
        sb.wait_bastion_ssh(True, sb.boot_delay + 20)
        account = mysql.Account(sb.db_user, sb.db_password, sb.db_name)
        db = (require_loopback(sb.db_host), sb.db_port)
        if mysql.available():
            print("  sysbench: preparing tables", flush=True)
            mysql.prepare(*db, account)
        far_host = require_loopback(pick_loopback_address(
            random.Random(), {sb.eip, sb.db_host, sb.appserver_host, LOCAL}))
        _, line = stack.enter_context(child(python_module("bench.targets", far_host)))
        cmd, banner = (int(port) for port in line.split()[1:])
        far = {"cmd": (far_host, cmd), "banner": (far_host, banner)}

        bastion = Bastion(require_loopback(sb.eip), sb.bastion_port, sb.user, sb.client_key,
                          sb.known_hosts)
        side = stack.enter_context(ssh_forward(bastion, CIPHER, [db, *far.values()], workdir))
        ssh = Contender(SSH, {n: (LOCAL, p) for n, p in zip(("db", *far), side.ports,
                                                              strict=True)},
                        lambda: tree_cpu_seconds([side.pid]),
                        " + ".join(filter(None, (side.cipher, side.mac))))
        ours, daemon = _ours(stack, sb, OURS, None, far)
        contenders, daemons = [ssh, ours], {OURS: daemon}
        if data_plane_supported():
            paramiko, daemons[PARAMIKO] = _ours(stack, sb, PARAMIKO, "paramiko", far)
            contenders.append(paramiko)
        direct = Contender(DIRECT, {"db": db, **far}, None, "no tunnel")
        results.contenders = [*contenders, direct]

        print("  bulk transfers and first bytes", flush=True)
        results.tcp = suites.tcp([*contenders, direct], args)
        if mysql.available():
            print("  sysbench", flush=True)
            results.qps, results.cpu = suites.sysbench([*contenders, direct], account, args)
        print("  new MySQL connections", flush=True)
        results.connections = [suites.connections([*contenders, direct], account, args)]
        print("  scp and ssh sessions: ssh-config's ProxyCommand vs ssh -J", flush=True)
        routes = [SshRoute(SSH_J, jump_config(workdir / "jump_config", sb), JUMP_ALIAS,
                           dict(daemon.env))]
        routes += [SshRoute(name, each.ssh_config(), "foo-appserver", each.env)
                   for name, each in daemons.items()]
        results.sessions = suites.openssh_sessions(routes, workdir, args)
        print("  CLI start-up", flush=True)
        results.startup = suites.cli_startup(daemon.env, "foo", "db", args)
        stack.close()  # every daemon and ssh -L down before the cold starts below
        print("  the real daemon: readiness and idle cost", flush=True)
        results.daemon = render_daemon(measure_daemon(
            sb, rounds=args.readiness_rounds, idle_window=args.idle_window), sb.boot_delay)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    os.environ[ENV] = "1"  # this process and every child: loopback only
    install_audit_guard()
    raise_fd_limit()
    if not mysql.available():
        print("bench: sysbench is missing (run: sudo apt-get install -y sysbench); its rows "
              "are skipped", file=sys.stderr)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(args.budget)
    results = Results(args=args, started=time.monotonic(), load_before=_load())
    print(f"bench: up to {args.budget} s", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="bastion-tray-bench-") as tmp:
            _run(Path(tmp), args, results)
    except BudgetExceeded as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
    results.load_after = _load()
    print(write_results(results))
    return 0


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
