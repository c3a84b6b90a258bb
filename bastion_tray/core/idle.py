"""Idle and auto-stop decisions, pure: the clock is passed in, every decision has its reason.

Activity is the number of open connections through a profile's forwards plus its open
proxy/shell channels. The idle clock starts when that count reaches zero. Time is wall-clock
(time.time), so a laptop that sleeps through the timeout stops the bastion when it wakes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from bastion_tray.core.durations import format_duration


@dataclass(frozen=True)
class IdlePolicy:
    idle_timeout: float  # seconds of no activity before the stop
    warn_before: float  # seconds before the stop when the warning goes out
    auto_stop: bool  # off: never stop, never warn


class Verdict(Enum):
    KEEP = "keep"  # nothing to do
    WARN = "warn"  # the stop is near: tell the user once
    STOP = "stop"  # stop the bastion now


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    stops_in: float | None  # seconds until the stop; None while active or auto-stop is off


@dataclass(frozen=True)
class IdleClock:
    """What the idle logic remembers between ticks."""

    idle_since: float | None = None  # when activity reached zero; None while active
    keep_until: float | None = None  # "keep running" postpones the stop to at least this time
    warned: bool = False  # the warning for the current idle period went out

    def observe(self, activity: int, now: float) -> IdleClock:
        """Feed the current activity count; starts or clears the idle period."""
        if activity > 0:
            return IdleClock(idle_since=None, keep_until=self.keep_until, warned=False)
        if self.idle_since is None or now < self.idle_since:  # a clock set backwards restarts it
            return replace(self, idle_since=now, warned=False)
        return self

    def postpone(self, now: float, seconds: float) -> IdleClock:
        """"Keep running for N minutes": no stop before now + seconds."""
        return replace(self, keep_until=max(self.keep_until or 0.0, now + seconds), warned=False)

    def reset(self) -> IdleClock:
        return IdleClock()

    def idle_seconds(self, now: float) -> float | None:
        return None if self.idle_since is None else max(0.0, now - self.idle_since)

    def deadline(self, policy: IdlePolicy) -> float | None:
        if self.idle_since is None or not policy.auto_stop:
            return None
        return max(self.idle_since + policy.idle_timeout, self.keep_until or 0.0)

    def decide(self, policy: IdlePolicy, activity: int, now: float) -> Decision:
        if not policy.auto_stop:
            return Decision(Verdict.KEEP, "auto-stop is off", None)
        if activity > 0:
            plural = "s" if activity > 1 else ""
            return Decision(Verdict.KEEP, f"{activity} connection{plural} open", None)
        deadline = self.deadline(policy)
        if deadline is None:
            return Decision(Verdict.KEEP, "idle clock not started", None)
        left = deadline - now
        idle = format_duration(self.idle_seconds(now) or 0)
        if left <= 0:
            return Decision(Verdict.STOP, f"idle {idle}, no connections", 0.0)
        if left <= policy.warn_before and not self.warned:
            return Decision(Verdict.WARN, f"idle {idle}; stops in {format_duration(left)}", left)
        return Decision(Verdict.KEEP, f"idle {idle}; stops in {format_duration(left)}", left)

    def warned_now(self) -> IdleClock:
        return replace(self, warned=True)
