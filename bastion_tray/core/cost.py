"""What the bastion cost, from the daemon's own record of what it saw (pure: the clock, the
time zone and the record come in as arguments).

The record is a list of observations — the instance's state, type and public addresses at a
moment — written when something changed and as a heartbeat every HEARTBEAT seconds at most
(service/usage.py). Each observation holds until the next one, unless the two are further apart
than MAX_GAP: then nobody watched in between (the daemon was not running, the laptop slept) and
a running bastion counts only until its last sighting. The last observation holds until the
live daemon's last sighting, or until `now` while that sighting is recent.

Billed: `pending` and `running` (AWS starts billing at `running`; counting from the start call
overestimates by the few seconds of `pending`). The public IPv4 charge runs while the instance
holds a public IP or an Elastic IP — an Elastic IP also while stopped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from itertools import pairwise
from typing import Any

from bastion_tray.core.prices import IPV4_PER_HOUR, TABLE_DATE, Price, instance_price
from bastion_tray.core.team import iso_utc

BILLED_STATES = frozenset({"pending", "running"})
#: an unchanged observation is written at most this often: a daemon that dies mid-run loses at
#: most this much of the running time
HEARTBEAT = 300.0
#: two observations further apart than this had nobody watching between them (the daemon
#: describes a bastion that is not stopped every 30 s, and writes a heartbeat every HEARTBEAT)
MAX_GAP = 2 * HEARTBEAT + 60.0
#: lines older than this are dropped when the record is rewritten (13 months and a bit)
RETENTION = 400 * 86400.0


@dataclass(frozen=True)
class Observation:
    """What one describe (or one of the daemon's own start/stop calls) said, at `at`."""

    at: float  # epoch seconds
    state: str  # EC2's
    instance_type: str | None = None
    public_ip: bool = False  # an auto-assigned public IPv4 (an EIP is one too, see elastic_ip)
    elastic_ip: bool = False
    instance_id: str | None = None
    source: str = "describe"  # describe, start, stop: what said so (for a reader of the file)

    @property
    def billed(self) -> bool:
        return self.state in BILLED_STATES

    @property
    def ipv4(self) -> bool:
        """Whether a public IPv4 address is charged for while this holds."""
        return self.elastic_ip or self.public_ip

    def same_as(self, other: Observation) -> bool:
        """The same facts (time and source aside): nothing to write but a heartbeat."""
        return (self.state, self.instance_type, self.public_ip, self.elastic_ip,
                self.instance_id) == (other.state, other.instance_type, other.public_ip,
                                      other.elastic_ip, other.instance_id)

    def to_line(self) -> str:
        return json.dumps({"t": round(self.at, 3), "state": self.state,
                           "type": self.instance_type, "ip": self.public_ip,
                           "eip": self.elastic_ip, "id": self.instance_id,
                           "src": self.source}, separators=(",", ":"))


def parse_line(line: str) -> Observation | None:
    """One line of the record; None for a line that is not one (torn, edited, foreign)."""
    try:
        data: Any = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    at, state = data.get("t"), data.get("state")
    if (isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at)
            or not isinstance(state, str) or not state):
        return None
    kind, iid, src = data.get("type"), data.get("id"), data.get("src", "describe")
    return Observation(float(at), state,
                       kind if isinstance(kind, str) and kind else None,
                       data.get("ip") is True, data.get("eip") is True,
                       iid if isinstance(iid, str) and iid else None,
                       src if isinstance(src, str) else "describe")


@dataclass(frozen=True)
class Span:
    start: float
    end: float
    instance_type: str | None = None


@dataclass(frozen=True)
class Spans:
    running: tuple[Span, ...]  # billed instance time, each with the type it ran as
    ipv4: tuple[Span, ...]  # public IPv4 address time


def spans(observations: Iterable[Observation], *, now: float,
          last_seen: float | None = None) -> Spans:
    """Billed and IPv4 intervals. `last_seen`: the live daemon's latest sighting (None: the
    record alone, as a dead daemon left it)."""
    obs = sorted(observations, key=lambda o: o.at)
    running: list[Span] = []
    ipv4: list[Span] = []

    def add(o: Observation, run_end: float, ip_end: float) -> None:
        if o.billed and run_end > o.at:
            running.append(Span(o.at, min(run_end, now), o.instance_type))
        if o.ipv4 and ip_end > o.at:
            ipv4.append(Span(o.at, min(ip_end, now)))

    for a, b in pairwise(obs):
        if b.at - a.at <= MAX_GAP:
            add(a, b.at, b.at)
        else:  # nobody watched: running only until seen; a stopped instance's EIP stays
            kept = (not a.billed and a.elastic_ip and b.elastic_ip
                    and a.instance_id == b.instance_id)
            add(a, a.at, b.at if kept else a.at)
    if obs:
        last = obs[-1]
        if last_seen is None:
            end = last.at
            add(last, end, end)
        else:
            seen = max(last_seen, last.at)
            run_end = now if now - seen <= MAX_GAP else seen
            # a stopped bastion is not polled: its Elastic IP is charged until told otherwise
            add(last, run_end, run_end if last.billed else now)
    return Spans(tuple(running), tuple(ipv4))


def day_start(now: float, tz: tzinfo | None = None) -> float:
    """Local midnight of `now`'s day (tz None: the system's time zone, DST included)."""
    local = datetime.fromtimestamp(now, tz)
    return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def month_start(now: float, tz: tzinfo | None = None) -> float:
    local = datetime.fromtimestamp(now, tz)
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def _clipped(span: Span, start: float, end: float) -> float:
    return max(0.0, min(span.end, end) - max(span.start, start))


@dataclass(frozen=True)
class Window:
    """Hours and USD within [start, end)."""

    start: float
    running_seconds: float
    ipv4_seconds: float
    instance_usd: float | None  # None: a type it ran as has no price in the table
    ipv4_usd: float

    @property
    def running_hours(self) -> float:
        return self.running_seconds / 3600.0

    @property
    def ipv4_hours(self) -> float:
        return self.ipv4_seconds / 3600.0

    @property
    def usd(self) -> float | None:
        return None if self.instance_usd is None else self.instance_usd + self.ipv4_usd


def window(s: Spans, start: float, end: float, region: str) -> tuple[Window, str | None]:
    """The window's figures and, when USD is unknown, why."""
    run = 0.0
    usd: float | None = 0.0
    reason: str | None = None
    for span in s.running:
        seconds = _clipped(span, start, end)
        if seconds <= 0:
            continue
        run += seconds
        price = instance_price(span.instance_type, region)
        if price.per_hour is None:
            usd, reason = None, price.reason
        elif usd is not None:
            usd += seconds / 3600.0 * price.per_hour
    ip = sum(_clipped(span, start, end) for span in s.ipv4)
    return Window(start, run, ip, usd, ip / 3600.0 * IPV4_PER_HOUR), reason


@dataclass(frozen=True)
class Usage:
    """One profile's cost figures, as `cost` and the tray show them."""

    today: Window
    month: Window
    region: str
    instance_id: str | None  # of the latest observation
    instance_type: str | None
    since: float | None  # the first observation on record
    price: Price  # of the latest type
    reason: str | None  # why the month's USD is unknown, if it is


def usage(observations: Sequence[Observation], region: str, *, now: float,
          tz: tzinfo | None = None, last_seen: float | None = None) -> Usage:
    s = spans(observations, now=now, last_seen=last_seen)
    today, today_reason = window(s, day_start(now, tz), now, region)
    month, month_reason = window(s, month_start(now, tz), now, region)
    latest = max(observations, key=lambda o: o.at) if observations else None
    kind = next((o.instance_type for o in sorted(observations, key=lambda o: -o.at)
                 if o.instance_type), None)
    return Usage(today, month, region, latest.instance_id if latest else None, kind,
                 min(o.at for o in observations) if observations else None,
                 instance_price(kind, region), month_reason or today_reason)


def hours_text(hours: float) -> str:
    """3.2 h; under 3 minutes in minutes or seconds, so a short run does not read as nothing."""
    if hours >= 0.05 or hours <= 0:
        return f"{max(hours, 0.0):.1f} h"
    seconds = hours * 3600
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def usd_text(usd: float | None) -> str:
    if usd is None:
        return "$?"
    return f"${usd:.2f}" if usd >= 0.005 or usd == 0 else "<$0.01"


def tray_line(month_hours: float, month_usd: float | None) -> str:
    """The tray's line: "this month: 3.2 h · $0.07"."""
    return f"this month: {hours_text(month_hours)} · {usd_text(month_usd)}"


NOTE = ("from what this daemon saw: its describes, starts and stops of the instance; time no "
        "daemon of yours watched (a teammate's run, say) is not in it")


def _window_json(w: Window) -> dict[str, Any]:
    return {"running_hours": round(w.running_hours, 4),
            "running_seconds": round(w.running_seconds, 1),
            "ipv4_hours": round(w.ipv4_hours, 4),
            "usd": None if w.usd is None else round(w.usd, 6)}


def usage_json(u: Usage) -> dict[str, Any]:
    """A profile's entry of `cost --json` (and the `cost` of `status --json`)."""
    return {
        "instance_id": u.instance_id,
        "instance_type": u.instance_type,
        "region": u.region,
        "running_hours": round(u.month.running_hours, 4),  # this month: the contract's number
        "usd": None if u.month.usd is None else round(u.month.usd, 6),
        "ipv4_hours": round(u.month.ipv4_hours, 4),
        "today": _window_json(u.today),
        "month": _window_json(u.month),
        "price": {"instance_per_hour": u.price.per_hour, "ipv4_per_hour": IPV4_PER_HOUR,
                  "table_date": TABLE_DATE},
        "usd_unknown": u.reason,
        "since": None if u.since is None else iso_utc(u.since),
        "note": NOTE,
    }
