"""The product as users run it: the real `bastion-tray` daemon, spawned by the real CLI.

Measures, against the sandbox:
- readiness delay: from the moment the bastion's sshd first answers (polled every 10 ms by a
  separate thread) to the moment the forward serves its first byte (the MySQL greeting), with
  `bastion-tray connect` started while the instance is stopped — the daemon's own polling,
  connect and channel setup are all inside it;
- idle daemon RSS (its children's apart) and CPU (with its children) over a quiet window,
  with the bastion running, SSH connected and a forward listening (nothing flowing).
"""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.net import require_loopback
from bench.procstat import descendants, rss_mb, tree_cpu_seconds


@dataclass
class DaemonResults:
    readiness_s: list[float] = field(default_factory=list)
    boot_to_ready_s: list[float] = field(default_factory=list)  # start request → usable
    idle_rss_mb: float = 0.0
    idle_children_rss_mb: float = 0.0  # an ssh ControlMaster and the like, below the daemon
    idle_children: int = 0
    idle_cpu_percent: float = 0.0
    idle_window_s: float = 0.0


def _first_byte(port: int, timeout: float = 10.0) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        if not sock.recv(1):
            raise RuntimeError("the forward closed without a greeting")


class _SshWatch(threading.Thread):
    """Notes the first moment the bastion's sshd answers with a banner."""

    def __init__(self, sandbox: Any) -> None:
        super().__init__(daemon=True)
        self.sandbox = sandbox
        self.answered_at: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set() and self.answered_at is None:
            if self.sandbox.bastion_ssh_up():
                self.answered_at = time.perf_counter()
            else:
                time.sleep(0.01)


def measure_daemon(sandbox: Any, *, rounds: int, idle_window: float) -> DaemonResults:
    results = DaemonResults()
    home = Path(tempfile.mkdtemp(prefix="bt-bench-", dir="/tmp"))
    config = sandbox.write_config(home / "config.toml", idle_timeout="30m")
    env = sandbox.child_env()
    env.update(BASTION_TRAY_HOME=str(home), BASTION_TRAY_CONFIG=str(config),
               BASTION_TRAY_LOOPBACK_ONLY="1")
    (home / "state").mkdir(parents=True, exist_ok=True)
    (home / "state" / "known_hosts").write_text(
        f"[{require_loopback(sandbox.eip)}]:{sandbox.bastion_port} "
        f"{sandbox.bastion_host_key_line}\n")

    def cli(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "bastion_tray", *args], env=env,
                              capture_output=True, text=True, timeout=120)
        if proc.returncode:
            raise RuntimeError(f"bastion-tray {' '.join(args)}: {proc.stderr}")
        return proc.stdout

    try:
        for _ in range(rounds):
            cli("stop", "foo")
            sandbox.reset()
            watch = _SshWatch(sandbox)
            watch.start()
            began = time.perf_counter()
            local = cli("connect", "foo", "db").strip()
            port = int(local.rpartition(":")[2])
            _first_byte(port)
            usable = time.perf_counter()
            watch.done.set()
            watch.join()
            if watch.answered_at is not None:
                results.readiness_s.append(usable - watch.answered_at)
            results.boot_to_ready_s.append(usable - began)
        pid = int((home / "run" / "daemon.pid").read_text().split()[0])
        time.sleep(2)  # let the last connection's teardown settle
        cpu0, t0 = tree_cpu_seconds([pid]), time.monotonic()
        time.sleep(idle_window)
        cpu1, t1 = tree_cpu_seconds([pid]), time.monotonic()
        results.idle_window_s = t1 - t0
        results.idle_cpu_percent = 100 * (cpu1 - cpu0) / (t1 - t0)
        results.idle_rss_mb = rss_mb(pid)
        kids = descendants(pid)
        results.idle_children, results.idle_children_rss_mb = len(kids), sum(map(rss_mb, kids))
    finally:
        subprocess.run([sys.executable, "-m", "bastion_tray", "shutdown"], env=env,
                       capture_output=True, timeout=30)
        shutil.rmtree(home, ignore_errors=True)
    return results


def render_daemon(r: DaemonResults, boot_delay: float) -> list[str]:
    def med(values: list[float]) -> str:
        return f"{statistics.median(values):.2f}" if values else "–"

    ready = statistics.median(r.readiness_s) if r.readiness_s else float("inf")
    return [
        "",
        "| the daemon (real CLI + daemon) | measured | target | met |",
        "|---|---:|---|---|",
        f"| readiness: sshd answers → forward serves its first byte, s (median of "
        f"{len(r.readiness_s)}) | {med(r.readiness_s)} | ≤ 0.5 | "
        f"{'yes' if ready <= 0.5 else 'NO'} |",
        f"| `connect` from stopped → first byte, s (sandbox boot delay {boot_delay:g} s) | "
        f"{med(r.boot_to_ready_s)} | – | – |",
        f"| idle daemon RSS, MB | {r.idle_rss_mb:.1f} | ≤ 60 | "
        f"{'yes' if r.idle_rss_mb <= 60 else 'NO'} |",
        f"| idle: its {r.idle_children} child process(es) (ssh ControlMaster), RSS MB | "
        f"{r.idle_children_rss_mb:.1f} | – | – |",
        f"| idle daemon + children CPU over {r.idle_window_s:.0f} s, % | "
        f"{r.idle_cpu_percent:.2f} | < 0.5 | "
        f"{'yes' if r.idle_cpu_percent < 0.5 else 'NO'} |",
    ]
