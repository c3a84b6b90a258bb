"""Turn the bench's samples into one markdown table with ratios against `ssh -L`."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Samples:
    """Every round's number for one (cipher, contender)."""

    negotiated: str = ""  # "aes128-ctr + hmac-sha2-256"
    download: list[float] = field(default_factory=list)  # MB/s
    upload: list[float] = field(default_factory=list)  # MB/s
    banner_ms: list[float] = field(default_factory=list)  # server speaks first (MySQL)
    request_ms: list[float] = field(default_factory=list)  # client speaks first (HTTP)
    served: list[int] = field(default_factory=list)  # of the concurrent connections


@dataclass(frozen=True)
class _Row:
    metric: str
    higher_is_better: bool
    target: float  # the ratio ours/ssh must reach (≥) or stay under (≤)
    attr: str


_ROWS = (
    _Row("download MB/s", True, 0.5, "download"),
    _Row("upload MB/s", True, 0.5, "upload"),
    _Row("first byte ms, server speaks first (MySQL-like)", False, 2.0, "banner_ms"),
    _Row("first byte ms, client speaks first (HTTP-like)", False, 2.0, "request_ms"),
)


def _fmt(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def paired_ratio(ssh: Sequence[float], ours: Sequence[float]) -> float:
    """Median over rounds of ours/ssh, each round's pair measured back to back: the machine's
    other load drifts between rounds, and pairing cancels most of it."""
    return statistics.median(b / a for a, b in zip(ssh, ours, strict=True) if a)


def render(results: dict[str, dict[str, Samples]], *, concurrent: int,
           notes: Sequence[str], extra: Sequence[str] = ()) -> str:
    """results[cipher]["ssh -L" | "ours"] → a markdown report."""
    lines = ["| metric (median of rounds) | cipher | ssh -L | ours | ours / ssh | target | met |",
             "|---|---|---:|---:|---:|---|---|"]
    for row in _ROWS:
        for cipher, sides in results.items():
            a, b = getattr(sides["ssh -L"], row.attr), getattr(sides["ours"], row.attr)
            if not a or len(a) != len(b):
                continue
            ratio = paired_ratio(a, b)
            want = f"{'≥' if row.higher_is_better else '≤'} {row.target:g}×"
            met = ratio >= row.target if row.higher_is_better else ratio <= row.target
            lines.append(f"| {row.metric} | {cipher} | {_fmt(statistics.median(a))} | "
                         f"{_fmt(statistics.median(b))} | {ratio:.2f}× | {want} | "
                         f"{'yes' if met else 'NO'} |")
    for cipher, sides in results.items():
        ssh, ours = sides["ssh -L"], sides["ours"]
        if ssh.served and ours.served:
            low_a, low_b = min(ssh.served), min(ours.served)
            lines.append(f"| {concurrent} concurrent round trips served (worst round) | "
                         f"{cipher} | {low_a} | {low_b} | – | "
                         f"all {concurrent} | {'yes' if low_b == concurrent else 'NO'} |")
    negotiated = [f"- {cipher}: ssh -L negotiated {s['ssh -L'].negotiated}; ours "
                  f"{s['ours'].negotiated}" for cipher, s in results.items()]
    return "\n".join([*lines, *extra, "", *negotiated,
                      *(f"- {note}" for note in notes)]) + "\n"
