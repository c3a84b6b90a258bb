"""The pure core: idle decisions and the bring-up loop, with a fake clock and a fake cloud."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bastion_tray.core.bringup import ensure_running
from bastion_tray.core.errors import CloudError, WaitTimeout
from bastion_tray.core.idle import IdleClock, IdlePolicy, Verdict
from bastion_tray.core.ports import InstanceInfo

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


class FakeCloud:
    def __init__(self, states: list[str], address: str | None = "127.1.2.3") -> None:
        self.states = states
        self.address = address
        self.calls: list[str] = []

    def describe(self) -> InstanceInfo:
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        self.calls.append(f"describe:{state}")
        return InstanceInfo("i-0123456789abcdef0", state, "foo-bastion", None, self.address)

    def start(self) -> None:
        self.calls.append("start")

    def stop(self) -> None:
        self.calls.append("stop")


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def run(cloud: FakeCloud, timeout: float = 300) -> tuple[InstanceInfo, bool, FakeTime, list[str]]:
    t = FakeTime()
    phases: list[str] = []
    info, started = ensure_running(cloud, timeout=timeout, clock=t.clock, sleep=t.sleep,
                                   progress=lambda p, d: phases.append(f"{p}: {d}"))
    return info, started, t, phases


def test_from_stopped_it_starts_and_polls_until_running() -> None:
    cloud = FakeCloud(["stopped", "pending", "pending", "running"])
    info, started, t, phases = run(cloud)
    assert started and info.address == "127.1.2.3"
    assert cloud.calls.count("start") == 1
    assert all(s <= 2.0 for s in t.sleeps)
    assert phases[0].startswith("starting instance")


def test_from_stopping_it_waits_for_stopped_before_starting() -> None:
    cloud = FakeCloud(["stopping", "stopping", "stopped", "pending", "running"])
    _, started, _, phases = run(cloud)
    assert started
    assert cloud.calls.index("start") > cloud.calls.index("describe:stopped")
    assert "finish stopping" in phases[0]


def test_already_running_is_not_started() -> None:
    cloud = FakeCloud(["running"])
    _, started, t, _ = run(cloud)
    assert not started and "start" not in cloud.calls and t.sleeps == []


def test_pending_is_waited_for_without_a_start() -> None:
    cloud = FakeCloud(["pending", "running"])
    _, started, _, _ = run(cloud)
    assert not started and "start" not in cloud.calls


def test_terminated_instance_is_an_error() -> None:
    with pytest.raises(CloudError, match="terminated"):
        run(FakeCloud(["terminated"]))


def test_running_without_an_address_is_an_error() -> None:
    with pytest.raises(CloudError, match="no public or Elastic IP"):
        run(FakeCloud(["running"], address=None))


def test_timeout_says_what_was_waited_for() -> None:
    with pytest.raises(WaitTimeout, match=r"did not reach 'running' within 30 s.*pending"):
        run(FakeCloud(["stopped", "pending"]), timeout=30)
