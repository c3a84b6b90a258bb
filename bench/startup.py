"""CLI start-up: warm `bastion-tray` commands against `python -c pass` on the same interpreter,
run alternately so each pair shares the machine's load of the moment."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BASELINE = "python -c pass"


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "bastion-tray"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bastion_tray"]


def commands(profile: str, forward: str) -> dict[str, list[str]]:
    cli = _cli()
    return {"`bastion-tray status`": [*cli, "status"],
            f"`bastion-tray connect {profile} {forward}` (listening)": [*cli, "connect", profile,
                                                                           forward],
            "`bastion-tray proxy --help`": [*cli, "proxy", "--help"]}


def _time(argv: Sequence[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(list(argv), env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-300:]!r}")
    return seconds * 1000


def precompile() -> None:
    """Byte-compile the package as `pip install` does (an editable install and
    PYTHONDONTWRITEBYTECODE=1 leave none): "warm" means as installed, not recompiling ~30 ms
    of our own source at every start."""
    package = Path(__file__).resolve().parent.parent / "bastion_tray"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True,
                   stdout=subprocess.DEVNULL, timeout=120)


def measure(argv: Sequence[str], env: dict[str, str], count: int
            ) -> tuple[list[float], list[float]]:
    """(`python -c pass` ms, command ms), `count` alternating pairs after one warm-up each."""
    baseline = [sys.executable, "-c", "pass"]
    precompile()
    _time(baseline, env), _time(argv, env)
    base, cmd = [], []
    for _ in range(count):
        base.append(_time(baseline, env))
        cmd.append(_time(argv, env))
    return base, cmd
