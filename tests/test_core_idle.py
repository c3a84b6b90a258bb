"""The pure core: idle decisions with a fake clock (the lifecycle: test_service_lifecycle.py)."""

from __future__ import annotations

from dataclasses import replace

from bastion_tray.core.idle import IdleClock, IdlePolicy, Verdict

POLICY = IdlePolicy(idle_timeout=600, warn_before=120, auto_stop=True)


def test_active_connections_keep_the_bastion() -> None:
    clock = IdleClock().observe(2, now=0)
    decision = clock.decide(POLICY, 2, now=10_000)
    assert decision.verdict is Verdict.KEEP
    assert decision.reason == "2 connections open"
    assert decision.stops_in is None


def test_idle_clock_starts_when_activity_reaches_zero() -> None:
    clock = IdleClock().observe(1, now=0).observe(0, now=100)
    assert clock.idle_seconds(now=150) == 50
    keep = clock.decide(POLICY, 0, now=150)
    assert keep.verdict is Verdict.KEEP and keep.stops_in == 550
    warn = clock.decide(POLICY, 0, now=100 + 600 - 119)
    assert warn.verdict is Verdict.WARN and "stops in 1 min" in warn.reason
    stop = clock.decide(POLICY, 0, now=700)
    assert stop.verdict is Verdict.STOP and stop.reason == "idle 10 min, no connections"


def test_warning_goes_out_once_per_idle_period() -> None:
    clock = IdleClock().observe(0, now=0)
    assert clock.decide(POLICY, 0, now=500).verdict is Verdict.WARN
    clock = clock.warned_now()
    assert clock.decide(POLICY, 0, now=510).verdict is Verdict.KEEP
    # new activity, then idle again: a new period with its own warning
    clock = clock.observe(1, now=520).observe(0, now=530)
    assert clock.decide(POLICY, 0, now=530 + 500).verdict is Verdict.WARN


def test_activity_resets_the_idle_clock() -> None:
    clock = IdleClock().observe(0, now=0).observe(1, now=590).observe(0, now=600)
    assert clock.decide(POLICY, 0, now=700).verdict is Verdict.KEEP
    assert clock.decide(POLICY, 0, now=1200).verdict is Verdict.STOP


def test_keep_running_postpones_the_stop() -> None:
    clock = IdleClock().observe(0, now=0).postpone(now=590, seconds=3600)
    assert clock.decide(POLICY, 0, now=700).verdict is Verdict.KEEP
    assert clock.decide(POLICY, 0, now=590 + 3600 - 60).verdict is Verdict.WARN
    assert clock.decide(POLICY, 0, now=590 + 3600).verdict is Verdict.STOP


def test_sleep_through_the_timeout_stops_at_wake() -> None:
    # wall-clock time: a laptop asleep for 2 h wakes with the deadline long past
    clock = IdleClock().observe(0, now=1000)
    assert clock.decide(POLICY, 0, now=1000 + 7200).verdict is Verdict.STOP


def test_clock_set_backwards_restarts_the_idle_period() -> None:
    clock = IdleClock().observe(0, now=1000).observe(0, now=500)
    assert clock.idle_since == 500


def test_auto_stop_off_never_stops() -> None:
    policy = replace(POLICY, auto_stop=False)
    clock = IdleClock().observe(0, now=0)
    decision = clock.decide(policy, 0, now=10**9)
    assert decision.verdict is Verdict.KEEP and decision.reason == "auto-stop is off"
    assert decision.stops_in is None
