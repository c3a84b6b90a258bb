"""What a process tree costs, read from /proc: CPU seconds, RSS, descendants."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """utime + stime of `pid` (plus its reaped children's, when asked); 0 once it is gone."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = _stat(pid)
        ticks = int(fields[11]) + int(fields[12])
        if reaped_children:
            ticks += int(fields[13]) + int(fields[14])
        return ticks / CLK_TCK
    return 0.0


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (an ssh ControlMaster the daemon spawned, its children)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for kid in parents.get(todo.pop(), []):
            found.append(kid)
            todo.append(kid)
    return found


def tree_cpu_seconds(pids: Iterable[int]) -> float:
    """CPU of each root and its reaped children, plus every live descendant's."""
    total = 0.0
    for root in pids:
        total += cpu_seconds(root, reaped_children=True)
        total += sum(cpu_seconds(kid, reaped_children=True) for kid in descendants(root))
    return total


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
