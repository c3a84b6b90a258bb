"""Issue 10, the lifecycle side: what the status says is in progress is in progress. Random
sequences of requests, give-ups, stops, lost links, outside stops and hanging adapter calls are
run through the real ProfileRuntime and the pure lifecycle (fakes, a fake clock, seeded: each
seed is the same run every time); every state the lifecycle passes through is checked, then a
quiet period with every held call answered must end every bring-up that began before it, and
a "waiting for SSH" or "connecting" must end soon after the instance is gone."""

from __future__ import annotations

import random

import pytest

from bastion_tray.core import lifecycle as lc
from bastion_tray.core.errors import CloudError
from tests.support.fakes import FakeCloud, Harness

READY_TIMEOUT = 300.0  # the harness's Timings.ready_timeout
PREFIXES = ["wait-ssh", "connect", "ec2-describe", "ec2-start", "ec2-stop", "count-sessions"]


def checked(seen: list[str], real_step: object) -> object:
    """lc.step, asserting the phase's promises on every state it returns."""
    def step(state: lc.Lifecycle, event: lc.Event, now: float) -> lc.Result:
        after, effects = real_step(state, event, now)  # type: ignore[operator]
        where = f"after {type(event).__name__} at {now:.2f}"
        if after.phase is lc.Phase.IDLE:
            assert after.label is None, f"idle with phase {after.label!r} {where}"
        elif after.phase is lc.Phase.STARTING:
            assert after.label and after.began_at is not None, where
            # a bring-up never outlives its timeout (the tick that notices ends it)
            assert now - after.began_at <= READY_TIMEOUT + 1.0, where
        else:
            assert after.label == "stopping", where
        seen.append(after.phase.value)
        return after, effects

    return step


def act(h: Harness, rng: random.Random, waiters: list[int]) -> None:
    """One random thing happening to the daemon or the instance."""
    roll = rng.random()
    if roll < 0.18:
        waiters.append(h.rt.request(rng.choice([lc.Goal.SSH, lc.Goal.LINK])).id)
    elif roll < 0.26 and waiters:
        waiter = waiters.pop(rng.randrange(len(waiters)))
        with h.rt._lock:  # what ProfileRuntime._wait does when its limit passes
            gone = h.rt._waiters.pop(waiter, None)
        if gone is not None:
            h.rt.post(lc.GiveUp(waiter))
    elif roll < 0.34:
        h.spawner.hold.add(rng.choice(PREFIXES))
    elif roll < 0.44:
        h.spawner.hold.discard(rng.choice(PREFIXES))
        h.spawner.release(rng.choice(PREFIXES))
    elif roll < 0.50:
        if h.cloud.state == "running":  # from outside: the console, a teammate, the backstop
            h.cloud.state = rng.choice(["stopped", "stopping"])
    elif roll < 0.55:
        live = [link for link in h.adapters.links if link.alive]
        if live:
            live[-1].lose()
    elif roll < 0.60:
        h.rt.post(lc.StopRequested(h.rt._waiter().id, "stopped by request",
                                   force=rng.random() < 0.5))
    elif roll < 0.64:
        h.rt.open_forward("db")
    elif roll < 0.70:
        h.adapters.ssh_error = (CloudError("connection refused") if h.adapters.ssh_error is None
                                else None)
    elif roll < 0.74:
        if h.rt.sessions:
            h.rt.session_closed()
        else:
            h.rt.session_opened()
    else:
        h.ticks(rng.choice([0.25, 1.0, 5.0, 31.0]))


def release_all_but_held(h: Harness) -> None:
    while any(not any(name.startswith(p) for p in h.spawner.hold) for name, _ in h.spawner.held):
        for prefix in [*PREFIXES, "lease", "backstop"]:
            if not any(prefix.startswith(p) for p in h.spawner.hold):
                h.spawner.release(prefix)


@pytest.mark.parametrize("seed", range(20))
def test_no_phase_outlives_what_it_waited_for(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    seen: list[str] = []
    monkeypatch.setattr(lc, "step", checked(seen, lc.step))
    h = Harness(FakeCloud(state=rng.choice(["stopped", "running"])))
    waiters: list[int] = []
    for _ in range(150):
        act(h, rng, waiters)
    # quiet: nothing new is asked, the network works again, every held call answers — but in
    # half the runs a last request gets the bastion waited on, then it is stopped from
    # outside: its sshd is gone, so a wait for it or a connect to it never answers
    gone = rng.random() < 0.5
    h.spawner.hold = {"wait-ssh", "connect"} if gone else set()
    h.adapters.ssh_error = None
    release_all_but_held(h)
    while h.rt.sessions:
        h.rt.session_closed()
    if gone:
        waiters.append(h.rt.request(rng.choice([lc.Goal.SSH, lc.Goal.LINK])).id)
        h.ticks(3.0)
        release_all_but_held(h)
        if h.cloud.state in ("running", "pending"):
            h.cloud.state = "stopped"
    quiet_since = h.clock.now
    down_since: float | None = None
    while h.clock.now < quiet_since + READY_TIMEOUT + 60:
        h.ticks(1.0, every=1.0)
        if h.cloud.state == "running":
            down_since = None
        elif down_since is None:
            down_since = h.clock.now
        phase = h.status()["phase"]
        if phase in ("waiting for SSH", "connecting") and down_since is not None:
            # what waits on the bastion itself stops waiting soon after it is gone
            assert h.clock.now - down_since <= 6.0, (phase, h.cloud.state, seed)
    s = h.rt.state
    if s.phase is lc.Phase.STARTING:  # only a reconnect or restart that began since
        assert s.began_at is not None and s.began_at > quiet_since, s
    if s.phase is lc.Phase.IDLE:
        snap = h.status()
        assert snap["phase"] is None and snap["starting_for_seconds"] is None, snap
    assert "starting" in seen  # the run exercised bring-ups at all

