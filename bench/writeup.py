"""The run's results as markdown: printed, written to bench/results/latest.md, and put into the
README's "Performance" section (that section only)."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.report import Metric, render, verdicts
from bench.startup import BASELINE

ROOT = Path(__file__).parent.parent
RESULTS = Path(__file__).parent / "results" / "latest.md"
README = ROOT / "README.md"
SECTION = "## Performance"

INTRO = """\
`make bench` (or `.venv/bin/python -m bench`; ~{minutes:.0f} min, on demand, not part of `make
test`; `scripts/prereqs.sh --bench` installs sysbench) starts the sandbox and, in one run, puts
the real daemon — spawned and driven by the real CLI (`bastion-tray connect foo db`) — side by
side with OpenSSH through the same bastion sshd: `ssh -N -L` with aes128-gcm@openssh.com for
forwards, `ssh -J` for sessions, and a direct connection as the floor. Every ratio is the median
of per-round ratios (the contenders alternate, each round's pair runs back to back). Results of
the last run (`bench/results/latest.md`):
"""

NOTES = """Why some rows look the way they do: `ssh -L` takes ~44 ms to a server's first byte (MySQL
greets first) because sshd sends the channel confirmation and the greeting as two small packets
and Nagle holds the second for the client's delayed ACK — hence the gap in new connections per
second. "ours" with the OpenSSH data plane hands each accepted socket to an `ssh` ControlMaster
(mux protocol), so its bytes move in C, in a process counted in its CPU; "ours (paramiko)"
moves them in Python. CLI start-up is mostly Python's imports. Other work on this shared 2-core
machine moves every number; the ratios are per-round pairs.
"""


@dataclass
class Results:
    args: argparse.Namespace
    started: float
    load_before: str
    load_after: str = "?"
    contenders: Sequence[Any] = ()  # suites.Contender
    tcp: list[Metric] = field(default_factory=list)
    qps: list[Metric] = field(default_factory=list)
    cpu: list[Metric] = field(default_factory=list)
    connections: list[Metric] = field(default_factory=list)
    sessions: list[Metric] = field(default_factory=list)
    startup: list[Metric] = field(default_factory=list)
    daemon: list[str] = field(default_factory=list)


def _tables(r: Results) -> list[str]:
    names = [c.name for c in r.contenders]
    ours = [n for n in names if n.startswith("ours")]
    tunnels = [n for n in names if n != "direct"]
    forward_rows = [*r.qps, *r.connections, *r.tcp]
    lines = render(forward_rows, columns=names, compared=ours, baseline="ssh -L")
    lines += ["", *render(r.cpu, columns=tunnels, compared=ours, baseline="ssh -L",
                          title="tunnel CPU per query (daemon + children / ssh)")]
    lines += ["", *render(r.sessions, columns=["ssh -J", *ours], compared=ours,
                          baseline="ssh -J",
                          title="to the app server (ours: `ssh -F <bastion-tray ssh-config>`)")]
    lines += ["", *render(r.startup, columns=[BASELINE, "bastion-tray"],
                          compared=["bastion-tray"], baseline=BASELINE,
                          title="CLI start-up, warm, byte-compiled as `pip install` leaves it "
                                "(median of runs)")]
    return [*lines, *r.daemon]


def _summary(r: Results) -> str:
    names = ["ours"]  # the default data plane; "ours (paramiko)", the fallback, is for reference
    found = verdicts([*r.qps, *r.connections, *r.tcp, *r.cpu], names, "ssh -L")
    found += verdicts(r.sessions, names, "ssh -J")
    found += verdicts(r.startup, ["bastion-tray"], BASELINE)
    missed = [f"{metric} ({who})" for metric, who, met in found if met != "yes"]
    met = len(found) - len(missed)
    return f"targets met by ours (the default data plane): {met} of {len(found)}" + (
        "; missed: " + "; ".join(missed) if missed else "") + (
        " — ours (paramiko), the fallback where OpenSSH can't carry the bytes, is shown for "
        "reference and judged by no target")


def _notes(r: Results, seconds: float) -> list[str]:
    import paramiko

    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    sysbench = subprocess.run(["sysbench", "--version"], capture_output=True,
                              text=True).stdout.strip() if _has("sysbench") else "no sysbench"
    a = r.args
    return [
        *(f"{c.name}: {c.negotiated}" for c in r.contenders),
        f"{time.strftime('%Y-%m-%d %H:%M')} on {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} CPUs, load average {r.load_before} → {r.load_after} (other work "
        "on the machine moves these numbers)",
        f"{ssh}; paramiko {paramiko.__version__}; Python {platform.python_version()}; "
        f"{sysbench}",
        f"{a.rounds} rounds; sysbench {a.sysbench_seconds:g} s per run, 4 tables × 10,000 rows; "
        f"connect loop {a.conn_seconds:g} s; {a.mib} MiB per transfer, {a.sequential} "
        f"sequential, {a.concurrent} concurrent; scp {a.scp_mib} MiB, {a.sessions} sessions "
        f"per round; {a.startup_count} CLI runs; loopback only; {seconds:.0f} s in all",
        "tunnel CPU = utime+stime from /proc of the daemon and every process below it (an ssh "
        "ControlMaster included), or of the ssh -L client, over the run ÷ the queries it served",
    ]


def _has(tool: str) -> bool:
    import shutil

    return shutil.which(tool) is not None


def write_results(r: Results) -> str:
    seconds = time.monotonic() - r.started
    body = [*_tables(r), "", f"**{_summary(r)}**", "",
            *(f"- {note}" for note in _notes(r, seconds)), "", NOTES.rstrip()]
    report = "# bench: ours vs OpenSSH\n\n" + "\n".join(body) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)
    _update_readme(INTRO.format(minutes=max(1, seconds / 60)) + "\n" + "\n".join(body) + "\n")
    return report + f"\nbench: written to {RESULTS} and {README.name}'s {SECTION!r} section\n"


def _update_readme(section: str) -> None:
    text = README.read_text()
    start = text.find(SECTION + "\n")
    if start < 0:
        return
    end = text.find("\n## ", start + len(SECTION))
    end = len(text) if end < 0 else end + 1
    README.write_text(text[:start] + SECTION + "\n\n" + section + "\n" + text[end:])
