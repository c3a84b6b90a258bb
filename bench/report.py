"""Turn the bench's samples into markdown tables: each contender's median, and each compared
contender's ratio to the baseline as the median of per-round ratios."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Metric:
    """One row: every round's number per contender (the rounds pair up by index)."""

    label: str
    higher_is_better: bool
    target: float | None  # the ratio compared/baseline must reach (≥) or stay under (≤)
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, who: str, value: float) -> None:
        self.samples.setdefault(who, []).append(value)


def paired_ratio(base: Sequence[float], other: Sequence[float]) -> float | None:
    """Median over rounds of other/base, each round's pair measured back to back: the
    machine's other load drifts between rounds, and pairing cancels most of it."""
    pairs = [b / a for a, b in zip(base, other, strict=False) if a]
    return statistics.median(pairs) if pairs else None


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _ratio(value: float | None) -> str:
    """Two decimals, three when two would round onto a target's edge (0.896 → "0.896×")."""
    if value is None:
        return "–"
    two = f"{value:.2f}"
    return f"{value:.3f}×" if abs(float(two) - value) > 1e-9 and two[-1] == "0" else f"{two}×"


def _met(metric: Metric, ratio: float | None) -> str:
    if metric.target is None or ratio is None:
        return "–"
    ok = ratio >= metric.target if metric.higher_is_better else ratio <= metric.target
    return "yes" if ok else "NO"


def render(metrics: Sequence[Metric], *, columns: Sequence[str], compared: Sequence[str],
           baseline: str, title: str = "metric (median of rounds)") -> list[str]:
    """A table: the metric, each column's median, each compared column's ratio to the
    baseline, the target and whether each compared column meets it."""
    ratios = [f"{who} / {baseline}" for who in compared]
    head = [title, *columns, *ratios, "target", "met"]
    lines = ["| " + " | ".join(head) + " |",
             "|---|" + "---:|" * (len(columns) + len(ratios)) + "---|---|"]
    for metric in metrics:
        values = [fmt(statistics.median(metric.samples[who])) if metric.samples.get(who)
                  else "–" for who in columns]
        base = metric.samples.get(baseline, [])
        found = [paired_ratio(base, metric.samples.get(who, [])) for who in compared]
        shown = [_ratio(r) for r in found]
        want = "–" if metric.target is None else \
            f"{'≥' if metric.higher_is_better else '≤'} {metric.target:g}×"
        met = " / ".join(_met(metric, r) for r in found)
        lines.append("| " + " | ".join([metric.label, *values, *shown, want, met]) + " |")
    return lines


def verdicts(metrics: Sequence[Metric], compared: Sequence[str], baseline: str
             ) -> list[tuple[str, str, str]]:
    """(metric, contender, yes/NO) for every row with a target: the summary line's input."""
    found = []
    for metric in metrics:
        for who in compared:
            ratio = paired_ratio(metric.samples.get(baseline, []), metric.samples.get(who, []))
            if metric.target is not None and ratio is not None:
                found.append((metric.label, who, _met(metric, ratio)))
    return found
