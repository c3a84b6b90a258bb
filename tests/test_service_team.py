"""A shared bastion in-process (DESIGN.md "Teams"): leases, the check before every stop, the
backstop — the real ProfileRuntime and lifecycle with fake adapters and a fake clock. Several
daemons share one FakeCloud (its tags are the leases) and one SharedBastion (who is connected
to the bastion's sshd: every daemon's links plus plain ssh users)."""

from __future__ import annotations

import logging

import pytest

from bastion_tray.core.errors import CloudError, InUseError, SSHError
from bastion_tray.core.status import ProfileStatus
from bastion_tray.core.statusline import status_line
from bastion_tray.core.team import LEASE_PREFIX, iso_utc, parse_iso_utc
from tests.support.fakes import (
    INSTANCE,
    FakeBackstop,
    FakeClock,
    FakeCloud,
    Harness,
    SharedBastion,
)

IDLE = 600.0
RECHECK = 10.0 * 1.2 + 0.5  # the harness re-checks every 10 s ± 20 %
BOB = "bob@laptop-b"


def up(h: Harness) -> None:
    waiter = h.rt.request()
    h.ticks(2)
    assert waiter.done.is_set() and waiter.error is None, waiter.error
    assert h.status()["bastion"]["ssh"] == "connected"


def lease(h: Harness, user: str = "me@laptop-a") -> float | None:
    value = h.cloud.tags.get(LEASE_PREFIX + user)
    return parse_iso_utc(value) if value is not None else None


def bob_holds_a_lease(h: Harness, seconds: float = 3600) -> None:
    h.cloud.tags[LEASE_PREFIX + BOB] = iso_utc(h.clock.now + seconds)


def ticks_all(clock: FakeClock, harnesses: list[Harness], seconds: float,
              every: float = 0.25) -> None:
    end = clock.now + seconds
    while clock.now < end:
        clock.advance(every)
        for h in harnesses:
            h.rt.tick()


# ---- the lease ------------------------------------------------------------------------------

def test_a_lease_is_held_while_used_renewed_every_third_and_released_at_the_stop() -> None:
    h = Harness(lease_ttl=60)
    up(h)
    first = lease(h)
    assert first == pytest.approx(h.clock.now + 60, abs=3)
    h.ticks(17)
    assert lease(h) == first  # not renewed before a third of its ttl
    h.ticks(4)
    renewed = lease(h)
    assert renewed is not None and renewed > first
    h.ticks(IDLE)
    assert h.cloud.state == "stopped"
    assert lease(h) is None and h.cloud.lease_calls[-1] == "delete:me@laptop-a"
    assert h.status()["lease"] == {"held": False, "until": None, "error": None}


def test_a_lease_is_written_before_the_start_so_a_teammate_never_stops_it_under_us() -> None:
    h = Harness()
    h.rt.request()
    assert h.cloud.state in ("pending", "running")
    assert lease(h) is not None  # while it boots, before SSH answers


def test_a_lease_left_by_a_crash_is_removed_when_the_restarted_daemon_does_not_use_it(
) -> None:
    h = Harness()
    up(h)
    assert lease(h) is not None
    h.restart()  # as after a SIGKILL: the state file says a tag of ours may be there
    h.rt.refresh()
    assert lease(h) is None


def test_a_lease_tag_that_cannot_be_written_never_blocks_a_connection(
        caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(lease_ttl=60)
    h.cloud.fail["put_lease"] = CloudError("not allowed to tag i-0123 (ec2:CreateTags)")
    with caplog.at_level(logging.WARNING):
        up(h)
        h.ticks(120)  # retried meanwhile
    assert "ec2:CreateTags" in (h.status()["lease"]["error"] or "")
    assert h.cloud.lease_calls.count("put:me@laptop-a") >= 2
    assert sum("could not write the lease tag" in r.message for r in caplog.records) == 1


# ---- the check before the idle stop ---------------------------------------------------------

def test_a_teammates_live_lease_keeps_the_bastion_running_until_it_is_gone() -> None:
    h = Harness()
    up(h)
    bob_holds_a_lease(h)
    h.ticks(IDLE + 1)
    assert h.cloud.state == "running"
    s = h.status()
    assert s["in_use_by"] == [BOB] and s["waiting_for_others"] is True
    assert s["stops_in_seconds"] is None and s["idle_seconds"] is not None
    assert lease(h) is None  # released: bob's daemon must not wait for us
    assert h.link.closed and s["bastion"]["ssh"] == "disconnected"
    assert [e["in_use_by"] for e in h.published("in_use")] == [[BOB]]
    assert status_line("foo", ProfileStatus.from_json(s)) == f"foo: in use by {BOB} · you are idle"
    h.ticks(RECHECK)
    assert h.cloud.state == "running"  # still his
    del h.cloud.tags[LEASE_PREFIX + BOB]
    h.ticks(RECHECK)
    assert h.cloud.state == "stopped"
    assert h.status()["in_use_by"] == [] and h.status()["waiting_for_others"] is False


@pytest.mark.parametrize("value", ["expired", "garbage"])
def test_a_lease_that_expired_or_is_not_a_time_does_not_keep_it_running(value: str) -> None:
    h = Harness()
    up(h)
    h.cloud.tags[LEASE_PREFIX + BOB] = (iso_utc(h.clock.now - 1) if value == "expired"
                                        else "soon")
    h.ticks(IDLE + 1)
    assert h.cloud.state == "stopped"


def test_a_plain_ssh_teammate_vetoes_the_stop_and_rechecks_use_a_connection_of_their_own(
) -> None:
    h = Harness()
    up(h)
    own = h.link
    h.adapters.others_on_bastion = 1
    h.ticks(IDLE + 1)
    assert h.cloud.state == "running"
    s = h.status()
    assert (s["in_use_by"], s["other_sessions"]) == ([], 1)
    assert status_line("foo", ProfileStatus.from_json(s)) == (
        "foo: in use by 1 other SSH session · you are idle")
    assert h.adapters.counted_over == [own]  # the first count went over our link
    h.ticks(RECHECK)
    probe = h.adapters.counted_over[-1]
    assert probe is not own and probe.closed  # a connection of its own, closed at once
    assert h.cloud.state == "running"
    h.adapters.others_on_bastion = 0  # the teammate logs out
    h.ticks(RECHECK)
    assert h.cloud.state == "stopped"


def test_a_count_that_keeps_failing_is_retried_then_the_leases_alone_decide(
        caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    up(h)
    h.adapters.others_on_bastion = SSHError("exec refused by the bastion")
    with caplog.at_level(logging.WARNING):
        h.ticks(IDLE + 1)
        assert h.cloud.state == "running"  # not sure: not stopped on a guess
        h.ticks(RECHECK)
        assert h.cloud.state == "running"
        h.ticks(RECHECK)
    assert h.cloud.state == "stopped"
    assert any("the leases alone decide" in r.message for r in caplog.records)


def test_a_user_back_while_waiting_for_others_gets_the_link_and_the_lease_again() -> None:
    h = Harness()
    up(h)
    bob_holds_a_lease(h)
    h.ticks(IDLE + 1)
    assert h.status()["waiting_for_others"]
    waiter = h.rt.request()
    h.ticks(2)
    assert waiter.done.is_set() and waiter.error is None
    s = h.status()
    assert s["waiting_for_others"] is False and s["bastion"]["ssh"] == "connected"
    assert lease(h) is not None
    del h.cloud.tags[LEASE_PREFIX + BOB]
    h.ticks(RECHECK)
    assert h.cloud.state == "running"  # no recheck left over: the idle clock starts anew


def test_keep_while_waiting_for_others_takes_the_bastion_back() -> None:
    h = Harness()
    up(h)
    bob_holds_a_lease(h)
    h.ticks(IDLE + 1)
    h.rt.keep_running(3600)
    h.ticks(2)
    s = h.status()
    assert s["waiting_for_others"] is False and s["bastion"]["ssh"] == "connected"
    assert lease(h) is not None


# ---- several daemons ----------------------------------------------------------------------

def _team(idle_a: float = IDLE, idle_b: float = IDLE) -> tuple[FakeCloud, FakeClock,
                                                              SharedBastion, Harness, Harness]:
    cloud, clock, shared, backstop = FakeCloud(), FakeClock(), SharedBastion(), FakeBackstop()
    a = Harness(cloud, user_id="alice@laptop-a", clock=clock, shared=shared,
                scheduler=backstop, idle_timeout=idle_a)
    b = Harness(cloud, user_id=BOB, clock=clock, shared=shared, scheduler=backstop,
                idle_timeout=idle_b)
    return cloud, clock, shared, a, b


@pytest.mark.parametrize("idle_b", [IDLE, IDLE + 60], ids=["same timeout", "later"])
def test_two_idle_daemons_never_wait_for_each_other(idle_b: float) -> None:
    cloud, clock, _, a, b = _team(idle_b=idle_b)
    up(a)
    up(b)
    assert cloud.calls.count("start") == 1
    ticks_all(clock, [a, b], idle_b + 2 * RECHECK)
    assert cloud.state == "stopped"
    assert cloud.calls.count("stop") == 1
    assert not cloud.tags  # neither lease left behind
    assert not a.adapters.the_backstop.schedules


def test_a_teammate_holding_a_connection_is_never_cut_and_the_last_one_out_stops_it() -> None:
    cloud, clock, _, a, b = _team()
    up(a)  # alice starts it
    up(b)
    b.rt.session_opened()  # bob runs a query that lasts
    ticks_all(clock, [a, b], 3 * IDLE)
    assert cloud.state == "running" and b.link.alive and not b.link.closed
    assert a.status()["in_use_by"] == [BOB]
    b.rt.session_closed()
    ticks_all(clock, [a, b], IDLE + 2 * RECHECK)
    assert cloud.state == "stopped" and cloud.calls.count("stop") == 1


# ---- an explicit stop and the exit -------------------------------------------------------

def test_stop_refuses_while_others_use_it_and_force_stops_it_anyway() -> None:
    h = Harness()
    up(h)
    bob_holds_a_lease(h)
    with pytest.raises(InUseError) as refused:
        h.rt.stop("stopped by request")
    assert BOB in refused.value.message and "--force" in (refused.value.hint or "")
    assert h.cloud.state == "running" and h.link.alive and lease(h) is not None
    state = h.rt.stop("stopped by request (--force)", force=True)
    assert state in ("stopping", "stopped") and h.cloud.state in ("stopping", "stopped")
    assert not h.adapters.the_backstop.schedules


def test_stop_alone_needs_no_force() -> None:
    h = Harness()
    up(h)
    assert h.rt.stop("stopped by request") in ("stopping", "stopped")
    assert not h.cloud.tags


def test_exit_with_a_teammate_on_it_leaves_it_running_and_takes_our_lease_away() -> None:
    h = Harness()
    up(h)  # we started it
    bob_holds_a_lease(h)
    h.rt.shutdown()
    assert h.cloud.state == "running"
    assert lease(h) is None and LEASE_PREFIX + BOB in h.cloud.tags
    assert h.adapters.the_backstop.schedules  # still guards bob's laptop


def test_exit_alone_stops_what_it_started_and_leaves_nothing_behind() -> None:
    h = Harness()
    up(h)
    h.rt.shutdown()
    assert h.cloud.state in ("stopping", "stopped")
    assert not h.cloud.tags and not h.adapters.the_backstop.schedules


def test_exit_of_a_daemon_that_did_not_start_it_only_takes_its_lease_away() -> None:
    h = Harness(FakeCloud(state="running"))
    up(h)
    h.rt.shutdown()
    assert h.cloud.state == "running" and not h.cloud.tags


# ---- the backstop ----------------------------------------------------------------------------

def test_the_backstop_is_pushed_every_third_and_deleted_by_the_last_users_stop() -> None:
    h = Harness(backstop=90)
    up(h)
    backstop = h.adapters.the_backstop
    assert backstop.schedules[INSTANCE] == pytest.approx(h.clock.now + 90, abs=3)
    first = backstop.schedules[INSTANCE]
    h.ticks(27)
    assert backstop.calls.count("push") == 1
    h.ticks(4)
    assert backstop.calls.count("push") == 2 and backstop.schedules[INSTANCE] > first
    s = h.status()["backstop"]
    assert s["state"] == "armed" and 55 < s["fires_in_seconds"] <= 90
    h.ticks(IDLE)
    assert h.cloud.state == "stopped" and INSTANCE not in backstop.schedules
    assert h.status()["backstop"]["state"] == "idle"


def test_a_daemon_waiting_for_others_keeps_the_backstop_pushed() -> None:
    h = Harness(backstop=90)
    up(h)
    bob_holds_a_lease(h)
    h.ticks(IDLE + 1)
    pushes = h.adapters.the_backstop.calls.count("push")
    h.ticks(95)
    assert h.adapters.the_backstop.calls.count("push") > pushes
    assert "delete" not in h.adapters.the_backstop.calls


def test_without_a_role_the_backstop_is_off_and_status_says_why() -> None:
    h = Harness(backstop_role=None)
    up(h)
    s = h.status()["backstop"]
    assert s["state"] == "off" and "backstop_role" in s["reason"] and "init" in s["reason"]
    assert h.adapters.the_backstop.calls == []


def test_backstop_off_in_the_config_is_off() -> None:
    h = Harness(backstop=None)
    up(h)
    assert 'backstop = "off"' in h.status()["backstop"]["reason"]
    assert h.adapters.the_backstop.calls == []


def test_a_scheduler_that_refuses_never_blocks_a_connection(
        caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(backstop=90)
    h.adapters.the_backstop.fail = CloudError("not allowed to create the schedule "
                                              "(scheduler:CreateSchedule)")
    with caplog.at_level(logging.WARNING):
        up(h)
        h.ticks(200)
    s = h.status()["backstop"]
    assert s["state"] == "error" and "scheduler:CreateSchedule" in s["reason"]
    assert h.adapters.the_backstop.calls.count("push") >= 2  # retried
    assert sum("backstop" in r.message for r in caplog.records) == 1
