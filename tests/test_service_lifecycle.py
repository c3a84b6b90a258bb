"""The service in-process: the real ProfileRuntime and the pure lifecycle, with fake adapters,
a fake clock and inline slow work — every transition without a network or a sleep. One test is
named after each fault of issue 8 and after each fix that shipped without a test."""

from __future__ import annotations

import json
import logging
import math

import pytest

from bastion_tray.core import lifecycle as lc
from bastion_tray.core.errors import CloudError, HostKeyError, UsageError, WaitTimeout
from bastion_tray.service.requests import keep_seconds
from bastion_tray.service.statefile import StateFile
from tests.support.fakes import INSTANCE, FakeCloud, Harness

IDLE = 600.0


def up(h: Harness) -> None:
    """Bring the bastion up with the link connected (stopped → pending → running)."""
    waiter = h.rt.request()
    h.ticks(2)
    assert waiter.done.is_set() and waiter.error is None, waiter.error
    assert h.status()["bastion"]["ssh"] == "connected"


# ---- bring-up -------------------------------------------------------------------------------

def test_from_stopped_it_starts_polls_until_running_then_connects() -> None:
    h = Harness()
    waiter = h.rt.request()
    assert h.cloud.calls == ["describe:stopped", "start", "describe:pending"]
    assert h.status()["phase"] == "starting instance"
    assert not waiter.done.is_set()
    h.ticks(1.25)
    assert waiter.done.is_set() and waiter.error is None
    assert h.adapters.waited == ["127.0.0.10"]
    s = h.status()
    assert (s["bastion"]["state"], s["bastion"]["ssh"], s["phase"]) == ("running", "connected",
                                                                        None)
    assert s["started_by_daemon"] is True
    assert [e["type"] for e in h.published("ready")] == ["ready"]


def test_from_stopping_it_waits_for_stopped_before_starting() -> None:
    h = Harness(FakeCloud(state="stopping"))
    h.rt.request()
    assert h.cloud.calls == ["describe:stopping"]
    assert "finish stopping" in h.published("progress")[-1]["detail"]
    h.ticks(1.25)
    assert h.cloud.calls[:4] == ["describe:stopping", "describe:stopped", "start",
                                 "describe:pending"]


def test_an_instance_already_running_is_not_started_nor_marked_ours() -> None:
    h = Harness(FakeCloud(state="running"))
    up(h)
    assert "start" not in h.cloud.calls
    assert h.status()["started_by_daemon"] is False


def test_waiters_for_ssh_are_told_before_the_link_and_both_share_one_bring_up() -> None:
    h = Harness(FakeCloud(state="running"))
    h.spawner.hold = {"wait-ssh", "connect"}
    ssh = h.rt.request(lc.Goal.SSH)
    link = h.rt.request(lc.Goal.LINK)
    h.spawner.release("wait-ssh")
    assert ssh.done.is_set() and ssh.host == "127.0.0.10"
    assert not link.done.is_set() and h.status()["bastion"]["ssh"] == "connecting"
    h.spawner.release()
    assert link.done.is_set() and link.error is None
    assert h.cloud.calls.count("describe:running") == 1


def test_an_ssh_only_demand_leaves_no_phase_behind() -> None:
    # issue 10: after `ssh foo-bastion` the status said "waiting for SSH" forever
    h = Harness(FakeCloud(state="running"))
    waiter = h.rt.request(lc.Goal.SSH)
    assert waiter.done.is_set()
    s = h.status()
    assert s["phase"] is None and s["lifecycle"] == "idle" and s["bastion"]["ssh"] == \
        "disconnected"


# ---- issue 10: the phase clears once what it waited for is done or gone ---------------------

def quiet(s: dict[str, object]) -> bool:
    """Nothing in progress, as `status --json` says it: the phase the CLI and tray print."""
    return s["phase"] is None and s["lifecycle"] == "idle" and s["starting_for_seconds"] is None


def test_ssh_foo_bastion_from_stopped_clears_the_phase_once_ssh_answers() -> None:
    h = Harness()  # stopped: the ProxyCommand's demand starts it
    waiter = h.rt.request(lc.Goal.SSH)
    h.ticks(1.25)
    assert waiter.done.is_set() and waiter.error is None
    s = h.status()
    assert quiet(s) and (s["bastion"]["state"], s["bastion"]["ssh"]) == ("running",
                                                                          "disconnected")
    assert h.adapters.links == []  # an SSH goal opens no link of its own


def test_after_ssh_foo_bastion_the_idle_stop_leaves_no_phase() -> None:
    h = Harness(FakeCloud(state="running"))
    channel = h.rt.proxy("@bastion", 22)  # what the daemon's `proxy` op does for @bastion
    h.rt.session_opened()
    assert channel.target == ("127.0.0.10", 22) and quiet(h.status())
    h.ticks(60, every=1)
    h.rt.session_closed()  # the user's ssh exits
    h.ticks(IDLE + 5, every=1)
    assert h.cloud.calls.count("stop") == 1 and quiet(h.status())  # "stopping", as EC2 says
    h.ticks(35, every=1)  # the next look sees it stopped
    s = h.status()
    assert s["bastion"]["state"] == "stopped"
    assert quiet(s)


@pytest.mark.parametrize("outcome", ["answers", "fails"])
def test_a_waiter_that_gives_up_leaves_no_phase_once_the_bring_up_ends(outcome: str) -> None:
    h = Harness()
    h.spawner.hold = {"wait-ssh"}
    waiter = h.rt.request(lc.Goal.SSH)
    h.ticks(1.25)
    assert h.status()["phase"] == "waiting for SSH"
    with h.rt._lock:  # what ProfileRuntime._wait does when its limit passes
        h.rt._waiters.pop(waiter.id)
    h.rt.post(lc.GiveUp(waiter.id))
    assert h.rt.state.waiters == () and h.status()["phase"] == "waiting for SSH"  # goes on
    if outcome == "fails":
        h.adapters.ssh_error = CloudError("connection refused")
    h.spawner.hold = set()
    h.spawner.release()
    s = h.status()
    assert quiet(s) and s["bastion"]["ssh"] == "disconnected"
    assert (s["error"] is None) == (outcome == "answers")


@pytest.mark.parametrize("goal", [lc.Goal.SSH, lc.Goal.LINK])
@pytest.mark.parametrize("state", ["stopped", "stopping", "terminated"])
def test_waiting_for_ssh_never_outlives_an_instance_stopped_under_it(goal: lc.Goal,
                                                                      state: str) -> None:
    """Issue 10: the status said "waiting for SSH" (and "running") about an instance stopped
    from outside while the daemon waited for its sshd, until ready_timeout — 5 min later."""
    h = Harness()
    h.spawner.hold = {"wait-ssh", "connect"}
    waiter = h.rt.request(goal)
    h.ticks(1.25)
    if goal is lc.Goal.LINK:
        h.spawner.release("wait-ssh")
        assert h.status()["phase"] == "connecting"
    else:
        assert h.status()["phase"] == "waiting for SSH"
    h.cloud.state = state  # the console, a teammate's stop --force, the backstop
    h.ticks(6)  # Timings.watch (5 s) and a tick
    s = h.status()
    assert quiet(s) and s["bastion"]["state"] == state and s["bastion"]["ssh"] == "disconnected"
    assert isinstance(waiter.error, CloudError) and state in waiter.error.message
    assert s["error"]["message"] == waiter.error.message
    h.spawner.hold = set()
    h.spawner.release()  # the late answers of the abandoned wait change nothing
    assert quiet(h.status()) and all(link.closed for link in h.adapters.links)


def test_a_look_that_fails_while_waiting_for_ssh_does_not_end_the_wait() -> None:
    h = Harness()
    h.spawner.hold = {"wait-ssh"}
    waiter = h.rt.request(lc.Goal.SSH)
    h.ticks(1.25)
    h.cloud.fail["describe"] = CloudError("RequestLimitExceeded")
    h.ticks(12)
    assert h.status()["phase"] == "waiting for SSH" and not waiter.done.is_set()
    h.spawner.hold = set()
    h.spawner.release()
    assert waiter.done.is_set() and waiter.error is None and quiet(h.status())


def test_an_unknown_host_key_fails_the_waiters_and_is_not_retried() -> None:
    h = Harness()
    h.adapters.connect_error = HostKeyError("unknown host key SHA256:x",
                                            hint="bastion-tray trust foo",
                                            fingerprint="SHA256:x")
    waiter = h.rt.request()
    h.ticks(5)
    assert isinstance(waiter.error, HostKeyError)
    assert h.status()["error"]["kind"] == "host_key"
    h.ticks(60)
    assert h.adapters.waited == ["127.0.0.10"]  # nobody asked again: no second attempt


def test_a_running_instance_without_an_address_is_an_error() -> None:
    cloud = FakeCloud(state="running", address="")
    h = Harness(cloud)
    waiter = h.rt.request()
    assert isinstance(waiter.error, CloudError) and "no public or Elastic IP" in \
        waiter.error.message


def test_a_terminated_instance_is_an_error() -> None:
    h = Harness(FakeCloud(state="terminated"))
    waiter = h.rt.request()
    assert isinstance(waiter.error, CloudError) and "terminated" in waiter.error.message


def test_ready_timeout_fails_the_waiters_with_what_it_waited_for() -> None:
    h = Harness()
    h.spawner.hold = {"wait-ssh"}
    waiter = h.rt.request()
    h.ticks(301)
    assert isinstance(waiter.error, WaitTimeout)
    assert "waiting for SSH" in waiter.error.message
    h.spawner.release()  # the late answer of the abandoned attempt changes nothing
    assert h.adapters.links == [] and h.status()["bastion"]["ssh"] == "disconnected"


def test_a_waiter_that_gives_up_leaves_the_bring_up_running_for_the_others() -> None:
    h = Harness(FakeCloud(state="running"))
    h.spawner.hold = {"wait-ssh"}
    with pytest.raises(WaitTimeout):
        h.rt.ensure(timeout=0.01)
    assert h.rt.state.waiters == ()
    h.spawner.release()
    assert h.status()["bastion"]["ssh"] == "connected"


# ---- the faults of issue 8 -----------------------------------------------------------------

def test_a_new_public_address_is_looked_up_after_every_start() -> None:
    h = Harness()
    h.cloud.next_addresses = ["127.0.0.10", "127.0.0.20"]
    up(h)
    assert h.rt.stop("test") == "stopping"
    up(h)
    assert h.adapters.waited == ["127.0.0.10", "127.0.0.20"]
    assert h.link.host == "127.0.0.20"
    assert h.status()["bastion"]["host"] == "127.0.0.20"


def test_a_reconnect_after_a_loss_uses_the_address_of_the_instance_now() -> None:
    h = Harness()
    up(h)
    h.rt.open_forward("db")
    h.cloud.address = "127.0.0.30"  # an Elastic IP replaced while it ran
    h.link.lose()
    h.ticks(1.5)
    assert h.adapters.waited[-1] == "127.0.0.30" and h.link.host == "127.0.0.30"
    assert h.status()["bastion"]["host"] == "127.0.0.30"


@pytest.mark.parametrize("first", ["link lost", "tick"])
def test_laptop_sleep_past_the_idle_timeout_stops_once_and_never_restarts(first: str) -> None:
    h = Harness()
    up(h)
    h.rt.open_forward("db")  # a listening forward: a lost link is worth reconnecting
    link = h.link
    h.clock.advance(IDLE + 60)  # SIGSTOP / laptop asleep past the idle timeout
    if first == "link lost":
        link.lose("the bastion stopped answering")
        h.rt.tick()
    else:
        h.rt.tick()
        link.lose("the bastion stopped answering")
    h.ticks(120)
    assert h.cloud.calls.count("stop") == 1
    assert h.cloud.calls.index("stop") > h.cloud.calls.index("start")
    assert h.cloud.calls.count("start") == 1  # nothing started it again
    assert h.status()["bastion"]["state"] == "stopped"
    assert h.status()["forwards"]["db"]["listening"] is True  # the next connection restarts it


@pytest.mark.parametrize("duration", [1e309, math.nan, -1.0, 1e30, 99999999999999999999 * 3600])
def test_one_bad_keep_never_kills_the_idle_stop(duration: float) -> None:
    h = Harness()
    up(h)
    h.rt.keep_running(duration)
    h.status()  # no OverflowError
    json.dumps(h.status())
    h.ticks(IDLE + 1, every=IDLE / 4)
    stops = h.cloud.calls.count("stop")
    if math.isfinite(duration) and duration > 1e20:  # clamped to the limit: stops after 7 days
        assert stops == 0
        assert h.status()["stops_in_seconds"] <= lc.KEEP_MAX
        h.ticks(lc.KEEP_MAX, every=3600)
        assert h.cloud.calls.count("stop") == 1
    else:  # refused: the idle stop comes as if nothing was said
        assert stops == 1


@pytest.mark.parametrize("value", [1e309, "nan", "inf", -5, "99999999999999999999h", "8d",
                                   True, [1], "1" * 100_000])
def test_keep_from_the_control_socket_is_bounded(value: object) -> None:
    with pytest.raises(UsageError) as info:
        keep_seconds(value)
    assert len(info.value.message) < 400
    assert keep_seconds("2h") == 7200 and keep_seconds(0) == 0


def test_the_idle_clock_survives_a_sigkill_after_up_with_no_connection() -> None:
    h = Harness()
    up(h)
    began = h.rt.state.idle.idle_since
    assert began is not None
    saved = json.loads((h.state_dir / "daemon-state.json").read_text())
    assert saved["profiles"]["foo"]["idle_since"] == began
    h.clock.now = began + IDLE / 2
    rt = h.restart()  # SIGKILL: nothing of the old runtime runs again
    rt.refresh()
    assert h.status()["idle_seconds"] == pytest.approx(IDLE / 2)
    assert h.status()["started_by_daemon"] is True
    h.ticks(IDLE / 2 + 1, every=10)
    assert h.cloud.calls.count("stop") == 1


def test_a_restarted_daemon_listens_again_on_the_forwards_that_were_open() -> None:
    h = Harness()
    h.rt.open_forward("db")
    rt = h.restart()
    assert "db" not in h.adapters.listeners
    rt.restore_forwards()
    assert h.adapters.listeners["db"].listening
    assert h.status()["forwards"]["db"]["listening"] is True


@pytest.mark.parametrize("content", [
    '{"instances": {"i-0123456789abcdef0": "x"}}',
    '{"version": 2, "profiles": {"foo": "x"}}',
    '{"version": 2, "profiles": {"foo": {"instance_id": 5, "started_by_daemon": true, '
    '"idle_since": null, "listening": []}}}',
    '{"version": 2, "profiles": {"foo": {"instance_id": "i-1", "started_by_daemon": true, '
    '"idle_since": NaN, "listening": []}}}',
    '{"version": 2, "profiles": {"foo": {"instance_id": "i-1", "started_by_daemon": "yes", '
    '"idle_since": null, "listening": []}}}',
    '{"version": 3, "profiles": {}}',
    "[]", "null", "not json", "[" * 100_000, "\xff\xfe",
])
def test_a_state_file_of_the_wrong_shape_is_set_aside(content: str, tmp_path, caplog) -> None:
    path = tmp_path / "daemon-state.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape") if content != "\xff\xfe"
                     else b"\xff\xfe")
    with caplog.at_level(logging.WARNING):
        h = Harness(state_dir=tmp_path)
    assert path.with_suffix(".corrupt").exists() and not path.exists()
    assert "set aside" in caplog.text
    up(h)  # and the daemon works: start, status, idle stop, exit
    h.status()
    h.ticks(IDLE + 1, every=10)
    assert h.cloud.calls.count("stop") == 1
    assert json.loads(path.read_text())["version"] == 2


def test_a_hanging_ec2_api_is_reported_within_5_s_and_fails_within_30_s() -> None:
    h = Harness()
    h.spawner.hold = {"ec2-describe"}
    waiter = h.rt.request()
    h.ticks(5)
    said = [e["detail"] for e in h.published("progress")]
    assert any("still waiting for the EC2 API at http://127.0.0.1:9/fake-ec2" in d
               for d in said), said
    assert not waiter.done.is_set()
    h.ticks(25)
    assert isinstance(waiter.error, CloudError)
    assert "http://127.0.0.1:9/fake-ec2" in waiter.error.message
    assert "30 s" in waiter.error.message
    h.spawner.release()  # the answer that comes after all is dropped
    assert h.cloud.calls == ["describe:stopped"] and h.rt.state.phase is lc.Phase.IDLE


# ---- the fixes that shipped without a test ---------------------------------------------

def test_idle_stop_rechecks_activity_at_the_moment_it_decides() -> None:
    """088429e: a connection accepted just before the idle stop keeps the bastion, even when
    the forward's own notice of it has not been processed yet."""
    h = Harness()
    up(h)
    h.rt.open_forward("db")
    h.clock.advance(IDLE + 1)
    h.adapters.listeners["db"].open(notify=False)  # counted, its Activity event still to come
    h.rt.tick()
    assert "stop" not in h.cloud.calls
    assert h.adapters.listeners["db"].cut == 0


# ---- stopping ------------------------------------------------------------------------------

def test_idle_warns_once_then_stops_and_forgets_it_started_it() -> None:
    h = Harness()
    up(h)
    h.ticks(IDLE - 119, every=30)
    h.ticks(60, every=1)
    assert len(h.published("warn")) == 1
    h.ticks(61, every=1)
    assert h.cloud.calls.count("stop") == 1
    stopped = h.published("stopped")
    assert len(stopped) == 1 and "idle" in stopped[0]["reason"]
    assert h.status()["started_by_daemon"] is False
    assert h.link.closed


def test_an_open_connection_keeps_the_bastion_and_closing_it_restarts_the_clock() -> None:
    h = Harness()
    up(h)
    h.rt.open_forward("db")
    listener = h.adapters.listeners["db"]
    listener.open()
    h.ticks(IDLE * 3, every=60)
    assert "stop" not in h.cloud.calls
    listener.hang_up()
    assert h.status()["idle_seconds"] == 0
    h.ticks(IDLE + 1, every=60)
    assert h.cloud.calls.count("stop") == 1


def test_a_demand_during_the_stop_starts_the_bastion_again_after_it() -> None:
    h = Harness()
    up(h)
    h.spawner.hold = {"ec2-stop"}
    h.clock.advance(IDLE + 1)
    h.rt.tick()
    assert h.rt.state.phase is lc.Phase.STOPPING
    waiter = h.rt.request()
    h.spawner.hold = set()
    h.spawner.release()
    h.ticks(3)
    assert h.cloud.calls.count("start") == 2
    assert h.cloud.calls.index("stop") < len(h.cloud.calls) - 1 - \
        h.cloud.calls[::-1].index("start")
    assert waiter.done.is_set() and waiter.error is None


def test_a_stop_while_starting_waits_for_the_start_call_then_stops() -> None:
    h = Harness()
    h.spawner.hold = {"ec2-start"}
    waiter = h.rt.request()
    h.spawner.hold = set()
    stopper = h.rt._waiter()
    h.rt.post(lc.StopRequested(stopper.id, "stopped by request"))
    assert "stop" not in h.cloud.calls  # StopInstances never overtakes StartInstances
    h.spawner.release()
    assert h.cloud.calls.index("stop") > h.cloud.calls.index("start")
    h.ticks(2)
    assert stopper.done.is_set() and waiter.error is not None
    assert h.adapters.links == []


def test_a_link_that_arrives_after_its_bring_up_was_abandoned_is_closed() -> None:
    h = Harness(FakeCloud(state="running"))
    h.spawner.hold = {"connect"}
    h.rt.request()
    stopper = h.rt._waiter()
    h.rt.post(lc.StopRequested(stopper.id, "stopped by request"))
    h.spawner.release()
    assert h.adapters.links[0].closed
    assert h.status()["bastion"]["ssh"] == "disconnected"


def test_an_instance_stopped_behind_our_back_is_noticed_and_not_restarted() -> None:
    h = Harness()
    up(h)
    h.rt.open_forward("db")
    h.cloud.state = "stopped"
    h.ticks(31, every=1)
    assert h.link.closed
    assert h.status()["bastion"]["state"] == "stopped"
    assert h.cloud.calls.count("start") == 1
    up(h)  # the next demand starts it
    assert h.cloud.calls.count("start") == 2


def test_reconnects_back_off_and_end_when_nothing_needs_the_link() -> None:
    h = Harness()
    up(h)
    h.rt.open_forward("db")
    h.adapters.ssh_error = CloudError("sshd not answering")
    h.link.lose()
    h.ticks(1 + 2 + 4 + 0.5)
    assert len(h.adapters.waited) == 1 + 3
    h.rt.stop("stopped by request", close_listeners=True)
    before = len(h.adapters.waited)
    h.ticks(120)
    assert len(h.adapters.waited) == before


def test_a_lost_link_with_nothing_listening_is_not_reconnected() -> None:
    h = Harness()
    up(h)
    h.link.lose()
    h.ticks(60)
    assert len(h.adapters.waited) == 1


def test_exit_stops_what_the_daemon_started() -> None:
    h = Harness()
    up(h)
    h.rt.shutdown()
    assert h.cloud.calls.count("stop") == 1 and h.link.closed


def test_exit_leaves_alone_what_the_daemon_did_not_start() -> None:
    h = Harness(FakeCloud(state="running"))
    up(h)
    h.rt.shutdown()
    assert "stop" not in h.cloud.calls and h.link.closed


def test_a_failing_stop_is_reported_and_the_idle_clock_goes_on() -> None:
    h = Harness()
    up(h)
    h.cloud.fail["stop"] = CloudError("UnauthorizedOperation: ec2:StopInstances")
    with pytest.raises(CloudError):
        h.rt.stop("stopped by request")
    assert h.status()["error"]["message"].startswith("UnauthorizedOperation")
    del h.cloud.fail["stop"]
    h.ticks(IDLE + 20, every=10)
    assert h.status()["bastion"]["state"] in ("stopping", "stopped")
    assert h.cloud.calls.count("stop") == 2


def test_a_failing_step_is_logged_once_and_the_next_tick_runs(monkeypatch, caplog) -> None:
    h = Harness()
    up(h)
    real_step, failures = lc.step, [0]

    def flaky(state: lc.Lifecycle, event: lc.Event, now: float) -> lc.Result:
        if isinstance(event, lc.Tick) and failures[0] < 5:
            failures[0] += 1
            raise OverflowError("cannot convert float infinity to integer")
        return real_step(state, event, now)

    monkeypatch.setattr(lc, "step", flaky)
    with caplog.at_level(logging.ERROR):
        h.ticks(IDLE + 10, every=1)
    logged = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(logged) == 1 and "OverflowError" in caplog.text
    assert h.cloud.calls.count("stop") == 1


def test_state_file_keeps_what_must_survive_and_nothing_else(tmp_path) -> None:
    h = Harness(state_dir=tmp_path)
    up(h)
    h.rt.open_forward("db")
    record = StateFile(tmp_path / "daemon-state.json").record("foo")
    assert h.rt.state.idle.idle_since is not None
    assert record == lc.Persisted(INSTANCE, True, h.rt.state.idle.idle_since, ("db",), lease=True)
