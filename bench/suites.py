"""The measurements, each run round by round with the contenders' order alternating (other
work on the machine drifts; a round's numbers are taken back to back)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import measure, mysql, openssh, startup
from bench.report import Metric

SSH, SSH_J, DIRECT = "ssh -L", "ssh -J", "direct"


@dataclass(frozen=True)
class Contender:
    name: str
    addresses: dict[str, tuple[str, int]]  # "db", "cmd", "banner" → where a client connects
    cpu_seconds: Callable[[], float] | None  # the tunnel's CPU so far; None: no tunnel
    negotiated: str  # what it moves bytes with, for the notes


def alternate(contenders: Sequence[Contender], rounds: int,
              step: Callable[[Contender], None]) -> None:
    for round_ in range(rounds):
        for who in contenders if round_ % 2 == 0 else contenders[::-1]:
            step(who)


def tcp(contenders: Sequence[Contender], args: argparse.Namespace) -> list[Metric]:
    down = Metric("download MB/s", True, 0.9)
    up = Metric("upload MB/s", True, 0.9)
    banner = Metric("first byte ms, server speaks first (MySQL-like)", False, 1.5)
    request = Metric("first byte ms, client speaks first (HTTP-like)", False, 1.5)
    served = Metric(f"{args.concurrent} concurrent round trips served", True, 1.0)

    def step(who: Contender) -> None:
        host, port = who.addresses["cmd"]
        down.add(who.name, measure.download(host, port, args.mib * measure.MiB))
        up.add(who.name, measure.upload(host, port, args.mib * measure.MiB))
        banner.add(who.name, measure.first_byte_ms(*who.addresses["banner"], args.sequential))
        request.add(who.name, measure.request_reply_ms(host, port, args.sequential))
        served.add(who.name, measure.concurrent_round_trips(host, port, args.concurrent))

    alternate(contenders, args.rounds, step)
    return [down, up, banner, request, served]


def sysbench(contenders: Sequence[Contender], account: mysql.Account,
             args: argparse.Namespace) -> tuple[list[Metric], list[Metric]]:
    """(QPS rows, tunnel CPU µs per query rows) for every test × thread count."""
    qps_rows, cpu_rows = [], []
    for test in mysql.TESTS:
        for threads in args.threads:
            qps = Metric(f"sysbench {test}, {threads} thr, QPS", True, 0.9)
            cpu = Metric(f"tunnel CPU µs/query, {test}, {threads} thr", False, 1.5)

            def step(who: Contender, test: str = test, threads: int = threads,
                     qps: Metric = qps, cpu: Metric = cpu) -> None:
                before = who.cpu_seconds() if who.cpu_seconds else 0.0
                run = mysql.run(test, *who.addresses["db"], account, threads=threads,
                                seconds=args.sysbench_seconds)
                qps.add(who.name, run.qps)
                if who.cpu_seconds and run.queries:
                    cpu.add(who.name, (who.cpu_seconds() - before) / run.queries * 1e6)

            alternate(contenders, args.rounds, step)
            print(f"  {test} × {threads}: " + ", ".join(
                f"{name} {sum(v) / len(v):,.0f}" for name, v in qps.samples.items()), flush=True)
            qps_rows.append(qps)
            cpu_rows.append(cpu)
    return qps_rows, cpu_rows


def connections(contenders: Sequence[Contender], account: mysql.Account,
                args: argparse.Namespace) -> Metric:
    row = Metric(f"new MySQL connections/s (pymysql connect + SELECT 1 + close, "
                 f"{args.conn_seconds:g} s)", True, 5.0)
    alternate(contenders, args.rounds, lambda who: row.add(who.name, mysql.new_connections_per_s(
        *who.addresses["db"], account, args.conn_seconds)))
    return row


@dataclass(frozen=True)
class SshRoute:
    name: str  # "ssh -J" (plain OpenSSH through the bastion) or an "ours" contender
    config: Path
    host: str
    env: dict[str, str]


def openssh_sessions(routes: Sequence[SshRoute], workdir: Path, args: argparse.Namespace
                     ) -> list[Metric]:
    """scp to the app server and `ssh … true`: ours (`bastion-tray ssh-config`'s
    ProxyCommand) vs OpenSSH alone (`ssh -J`)."""
    source = openssh.write_file(workdir / "scp-source.bin", args.scp_mib)
    scp = Metric(f"scp {args.scp_mib} MiB to the app server, MB/s", True, 0.95)
    session = Metric("`ssh HOST true` session setup, ms", False, 1.05)

    def step(route: SshRoute) -> None:
        scp.add(route.name, openssh.scp_mb_s(route.config, route.host, source,
                                             workdir / "scp-dest.bin", route.env))
        for _ in range(args.sessions):
            session.add(route.name, openssh.session_s(route.config, route.host, route.env) * 1e3)

    for round_ in range(args.rounds):
        for route in routes if round_ % 2 == 0 else routes[::-1]:
            step(route)
    source.unlink()
    return [scp, session]


def cli_startup(env: dict[str, str], profile: str, forward: str,
                args: argparse.Namespace) -> list[Metric]:
    rows = []
    for label, argv in startup.commands(profile, forward).items():
        row = Metric(f"{label}, ms", False, 4.0)
        base, cmd = startup.measure(argv, env, args.startup_count)
        row.samples = {startup.BASELINE: base, "bastion-tray": cmd}
        rows.append(row)
    return rows
