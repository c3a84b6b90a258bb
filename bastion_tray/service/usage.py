"""The daemon's record of what it saw of each bastion, for `cost` (core/cost.py computes).

`RecordingCloud` wraps a profile's cloud adapter: every call passes through unchanged, and what
the answers say — a describe's state, type and addresses, a start or stop that EC2 accepted —
goes to the profile's `UsageRecord`, a JSON-lines file under the state dir
(`<state>/usage/<profile>.jsonl`). A line is appended when something changed, else as a
heartbeat every HEARTBEAT seconds at most; the first sighting of each daemon is always written,
so a restart shows as a gap. The record never fails a call: a write that fails is logged once
and the call's answer goes back as it came. Lines older than RETENTION are dropped when the file
is rewritten (at load, and every REWRITE_EVERY appends); a line that does not parse is skipped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion_tray.core import cost
from bastion_tray.core.ports import Cloud, InstanceInfo

log = logging.getLogger("bastion_tray.daemon")

#: observations kept in memory: enough for "this month" (the one before the window is kept too)
MEMORY = 40 * 86400.0
REWRITE_EVERY = 2000  # appends between two looks at whether the file needs trimming


def record_path(state_dir: Path, profile: str) -> Path:
    return state_dir / "usage" / f"{profile}.jsonl"


class UsageRecord:
    """One profile's record: the file, and its recent observations in memory. Thread-safe."""

    def __init__(self, path: Path, profile: str, region: str, *,
                 clock: Callable[[], float] = time.time,
                 heartbeat: float = cost.HEARTBEAT) -> None:
        self.path, self.profile, self.region = path, profile, region
        self._clock, self._heartbeat = clock, heartbeat
        self._lock = threading.Lock()
        self._obs: list[cost.Observation] = []
        self._last_written: float | None = None  # by this process
        self.last_seen: float | None = None  # this process's latest sighting
        self._appends = 0
        self._failed = False
        self.skipped = 0  # lines of the file that did not parse
        self._load()

    # ---- the file ----------------------------------------------------------------------------

    def _load(self) -> None:
        """Read the file (skipping what does not parse), trimming it when it holds old lines."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        except OSError as exc:
            self._fail("read", exc)
            return
        now = self._clock()
        observations = []
        for line in text.splitlines():
            if not line.strip():
                continue
            o = cost.parse_line(line)
            if o is None:
                self.skipped += 1
            else:
                observations.append(o)
        if self.skipped:
            log.warning("[profile=%s] %s: skipped %d line(s) that are not observations",
                        self.profile, self.path, self.skipped)
        observations.sort(key=lambda o: o.at)
        self._obs = _recent(observations, now)
        if observations and observations[0].at < now - cost.RETENTION:
            self._rewrite(observations, now)

    def _rewrite(self, observations: list[cost.Observation], now: float) -> None:
        kept = [o for o in observations if o.at >= now - cost.RETENTION]
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text("".join(o.to_line() + "\n" for o in kept), encoding="utf-8")
            os.replace(tmp, self.path)
            log.info("[profile=%s] usage record trimmed to %d line(s) of the last %d days",
                     self.profile, len(kept), int(cost.RETENTION // 86400))
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self._fail("rewrite", exc)

    def _append(self, o: cost.Observation) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # one write() of one line in append mode: a crash leaves at most a torn last line,
            # which the next load skips
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(o.to_line() + "\n")
        except OSError as exc:
            self._fail("write", exc)
            return
        self._last_written = o.at
        self._appends += 1
        if self._appends % REWRITE_EVERY == 0:
            self._trim_file()

    def _trim_file(self) -> None:
        try:
            with self.path.open(encoding="utf-8", errors="replace") as f:
                first = f.readline()
        except OSError:
            return
        o = cost.parse_line(first)
        if o is not None and o.at < self._clock() - cost.RETENTION:
            observations = []
            with contextlib.suppress(OSError):
                for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                    if (parsed := cost.parse_line(line)) is not None:
                        observations.append(parsed)
            self._rewrite(observations, self._clock())

    def _fail(self, what: str, exc: OSError) -> None:
        if not self._failed:  # once: a full disk would say so every 30 s otherwise
            self._failed = True
            log.warning("[profile=%s] usage record %s: could not %s it (%s); `cost` misses "
                        "what is not recorded (logged once)", self.profile, self.path, what, exc)

    # ---- observing ---------------------------------------------------------------------------

    def observe(self, o: cost.Observation) -> None:
        with self._lock:
            self.last_seen = o.at if self.last_seen is None else max(self.last_seen, o.at)
            last = self._obs[-1] if self._obs else None
            due = (self._last_written is None or last is None or not o.same_as(last)
                   or o.at - self._last_written >= self._heartbeat)
            if not due:
                return
            self._obs.append(o)
            if len(self._obs) > 4 * REWRITE_EVERY:
                self._obs = _recent(self._obs, o.at)
            self._append(o)

    def latest(self) -> cost.Observation | None:
        with self._lock:
            return self._obs[-1] if self._obs else None

    def observations(self) -> list[cost.Observation]:
        with self._lock:
            return list(self._obs)

    def usage(self, now: float | None = None) -> cost.Usage:
        """The figures as of now: the live daemon's sightings count up to now while fresh."""
        now = self._clock() if now is None else now
        with self._lock:
            observations, seen = list(self._obs), self.last_seen
        return cost.usage(observations, self.region, now=now, last_seen=seen)


def _recent(observations: list[cost.Observation], now: float) -> list[cost.Observation]:
    """Those of the last MEMORY seconds, and the one before them (what held when they began)."""
    first = next((i for i, o in enumerate(observations) if o.at >= now - MEMORY),
                 len(observations))
    return observations[max(0, first - 1):]


class RecordingCloud:
    """A Cloud that records what its answers say (see the module's docstring).

    Anything else the wrapped adapter offers passes through untouched (`__getattr__`).
    """

    def __init__(self, inner: Cloud, record: UsageRecord,
                 clock: Callable[[], float] = time.time) -> None:
        self._inner, self.usage_record, self._clock = inner, record, clock

    @property
    def endpoint(self) -> str:
        return self._inner.endpoint

    def describe(self) -> InstanceInfo:
        info = self._inner.describe()
        self._record(lambda: cost.Observation(
            self._clock(), info.state, info.instance_type, info.public_ip is not None,
            info.elastic_ip is not None, info.instance_id))
        return info

    def start(self) -> None:
        self._inner.start()
        self._after_call("pending", "start")  # EC2 took it: the instance is pending now

    def stop(self) -> None:
        self._inner.stop()
        self._after_call("stopping", "stop")  # no longer billed from here

    def put_lease(self, user_id: str, until: float) -> None:
        self._inner.put_lease(user_id, until)

    def delete_lease(self, user_id: str) -> None:
        self._inner.delete_lease(user_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _after_call(self, state: str, source: str) -> None:
        def observation() -> cost.Observation:
            last = self.usage_record.latest()
            if last is None:
                return cost.Observation(self._clock(), state, source=source,
                                        instance_id=getattr(self._inner, "instance_id", None))
            return cost.Observation(self._clock(), state, last.instance_type, last.public_ip,
                                    last.elastic_ip, last.instance_id, source)

        self._record(observation)

    def _record(self, make: Callable[[], cost.Observation]) -> None:
        try:
            self.usage_record.observe(make())
        except Exception:  # a bug here must not fail the call the daemon made
            log.exception("[profile=%s] recording usage failed", self.usage_record.profile)


def usage_record_of(cloud: object) -> UsageRecord | None:
    """The record behind a profile's cloud adapter, when it is a RecordingCloud."""
    record = getattr(cloud, "usage_record", None)
    return record if isinstance(record, UsageRecord) else None


def cost_of(cloud: object, now: float | None = None) -> dict[str, Any] | None:
    """A profile's `cost` entry (core.cost.usage_json), or None when nothing records it."""
    record = usage_record_of(cloud)
    return None if record is None else cost.usage_json(record.usage(now))


def empty_cost(region: str) -> dict[str, Any]:
    """The `cost` entry of a profile nothing records: no hours seen."""
    return cost.usage_json(cost.usage([], region, now=time.time()))


def add_costs(status: dict[str, Any], cloud_of: Callable[[str], object]) -> dict[str, Any]:
    """`status` with a `cost` entry in every profile whose usage is recorded."""
    for name, snap in status.get("profiles", {}).items():
        if isinstance(snap, dict):
            try:
                figures = cost_of(cloud_of(name))
            except Exception:  # the status must answer even if the figures cannot be had
                log.exception("[profile=%s] cost figures failed", name)
                continue
            if figures is not None:
                snap["cost"] = figures
    return status
