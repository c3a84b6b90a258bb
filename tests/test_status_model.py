"""The typed status (core/status.py): from_json/to_json on replies recorded from the real
daemon, tolerance of new and missing keys, clear errors for wrong types, the one status line;
then the recordings checked against the live daemon in the sandbox."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from bastion_tray.core.paths import app_paths
from bastion_tray.core.status import ProfileStatus, Status, StatusFormatError
from bastion_tray.core.statusline import human_duration, status_line
from bastion_tray.sandbox import Sandbox
from bastion_tray.ui.model import profile_state
from tests.fixtures.statuses import FOLDER, STATES, profile, recorded, reply, write
from tests.support.app import App, wait_until
from tests.support.console import no_console_output

# ---- from_json / to_json ------------------------------------------------------------------------


@pytest.mark.parametrize("state", sorted(STATES))
def test_a_recorded_reply_round_trips_exactly(state: str) -> None:
    data = reply(state)
    status = Status.from_json(data)
    assert status.to_json() == data
    assert json.dumps(status.to_json(), sort_keys=True) == json.dumps(data, sort_keys=True)
    assert Status.from_json(status.to_json()) == status


def test_the_recordings_read_as_the_states_they_are_named_after() -> None:
    assert profile("stopped").bastion.state == "stopped" and not profile("stopped").starting
    assert profile("starting").starting and profile("starting").phase
    ready = profile("ready")
    assert ready.running and ready.bastion.ssh == "connected"
    assert ready.forwards["db"].listening and ready.stops_in_seconds is not None
    assert profile("connected").connections == 1 and profile("connected").stops_in_seconds is None
    assert not profile("auto_stop_off").auto_stop
    error = profile("host_key_error").error
    assert error is not None and error.kind == "host_key" and error.hint
    daemon = recorded("stopped").daemon
    assert daemon is not None and daemon.pid and daemon.config_changed is False


def test_keys_it_does_not_know_are_kept_at_every_level() -> None:
    data = reply("ready")
    data["new_top"] = {"x": [1, 2]}
    data["daemon"]["uptime"] = 12
    foo = data["profiles"]["foo"]
    foo["watchers"] = ["alice@laptop"]
    foo["backstop"] = {"at": "2026-12-01T22:10:00Z", "role": None}
    foo["bastion"]["az"] = "ap-northeast-1a"
    foo["forwards"]["db"]["bind"] = "127.0.0.1"
    status = Status.from_json(data)
    p = status.profiles["foo"]
    assert p.extra["watchers"] == ["alice@laptop"] and p.bastion.extra == {
        "az": "ap-northeast-1a"}
    assert status.to_json() == data
    data["profiles"]["foo"]["watchers"].append("bob")  # the value holds its own copy
    assert p.extra["watchers"] == ["alice@laptop"]


def test_missing_optional_keys_get_defaults_and_stay_missing() -> None:
    """The contract's own example (DESIGN.md), no more: it reads, and writes back the same."""
    minimal = {"profiles": {"foo": {
        "bastion": {"instance_id": "i-0abc", "state": "stopped", "host": None,
                    "ssh": "disconnected"},
        "forwards": {"db": {"local": "127.0.0.1:13306", "listening": True,
                            "active_connections": 0}},
        "sessions": 0, "idle_seconds": None, "stops_in_seconds": None}}}
    status = Status.from_json(minimal)
    p = status.profiles["foo"]
    assert (p.auto_stop, p.hosts, p.phase, p.error, p.forwards["db"].remote) == \
        (True, (), None, None, None)
    assert status.daemon is None
    assert status.to_json() == minimal
    assert status_line("foo", p) == "foo: stopped"


@pytest.mark.parametrize(("change", "where"), [
    (lambda d: d.update(profiles=[]), "status.profiles: expected an object, got a list"),
    (lambda d: d["profiles"].update(foo="x"), "status.profiles.foo: expected an object"),
    (lambda d: d["profiles"]["foo"].pop("bastion"), "status.profiles.foo.bastion: missing"),
    (lambda d: d["profiles"]["foo"]["bastion"].update(state=3),
     "status.profiles.foo.bastion.state: expected a string, got an integer 3"),
    (lambda d: d["profiles"]["foo"].update(sessions=True),
     "status.profiles.foo.sessions: expected an integer, got a boolean"),
    (lambda d: d["profiles"]["foo"].update(sessions=1.5),
     "status.profiles.foo.sessions: expected an integer, got a number"),
    (lambda d: d["profiles"]["foo"].update(stops_in_seconds="soon"),
     "status.profiles.foo.stops_in_seconds: expected a number of seconds or null"),
    (lambda d: d["profiles"]["foo"].update(stops_in_seconds=math.inf),
     "status.profiles.foo.stops_in_seconds: expected a finite number of seconds"),
    (lambda d: d["profiles"]["foo"].update(stops_in_seconds=math.nan), "finite"),
    (lambda d: d["profiles"]["foo"]["forwards"]["db"].update(listening="yes"),
     "status.profiles.foo.forwards.db.listening: expected true or false"),
    (lambda d: d["profiles"]["foo"].update(hosts=["appserver", 2]),
     "status.profiles.foo.hosts: expected a list of strings"),
    (lambda d: d["profiles"]["foo"].update(error={"kind": "x"}),
     "status.profiles.foo.error.message: missing"),
    (lambda d: d["daemon"].update(pid="1"), "status.daemon.pid: expected an integer or null"),
])
def test_a_wrong_shape_is_a_clear_value_error(change: Any, where: str) -> None:
    data = copy.deepcopy(reply("ready"))
    change(data)
    with pytest.raises(ValueError, match=re.escape(where)) as caught:
        Status.from_json(data)
    assert isinstance(caught.value, StatusFormatError) and caught.value.kind == "daemon"


@pytest.mark.parametrize("value", [None, "x", 3, [], {1: 2}])
def test_not_an_object_at_all_is_a_value_error(value: object) -> None:
    with pytest.raises(StatusFormatError, match="status: expected an object"):
        Status.from_json(value)


def test_values_are_frozen() -> None:
    status = recorded("ready")
    with pytest.raises(AttributeError):
        status.profiles["foo"].sessions = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        status.profiles["foo"].forwards["x"] = status.profiles["foo"].forwards["db"]  # type: ignore[index]


def test_aging_runs_the_clocks_on_without_touching_the_original() -> None:
    starting = replace(profile("starting"), starting_for_seconds=3.2)
    ready = replace(profile("ready"), stops_in_seconds=55.0, idle_seconds=5.0)
    status = Status(profiles={"foo": starting, "bar": ready})
    later = status.aged(10.0)
    assert later.any_starting and not Status().any_starting
    assert later.profiles["foo"].starting_for_seconds == pytest.approx(13.2)
    assert later.profiles["bar"].stops_in_seconds == pytest.approx(45.0)
    assert later.profiles["bar"].idle_seconds == pytest.approx(15.0)
    assert status.profiles["foo"].starting_for_seconds == 3.2
    assert ready.aged(100).stops_in_seconds == 0.0


# ---- the one status line ------------------------------------------------------------------------


def test_the_status_line_of_each_recorded_state() -> None:
    assert status_line("foo", profile("stopped")) == "foo: stopped"
    starting = replace(profile("starting"), starting_for_seconds=3.7, phase="waiting for SSH")
    assert status_line("foo", starting) == "foo: starting… 3 s · waiting for SSH"
    assert status_line("foo", replace(profile("ready"), stops_in_seconds=1800.0)) == \
        "foo: running · stops in 30 min"
    assert status_line("foo", profile("connected")) == "foo: running · 1 connection"
    assert status_line("foo", profile("auto_stop_off")) == "foo: running · auto-stop off"
    line = status_line("foo", profile("host_key_error"))
    assert line.startswith("foo: error — ") and len(line) <= 75


def test_the_idle_warning_once_the_stop_is_near() -> None:
    p = replace(profile("ready"), stops_in_seconds=100.0)
    assert status_line("foo", p, warn_before=120) == "foo: running · idle, stops in 1 min 40 s"
    assert status_line("foo", p, warn_before=60) == "foo: running · stops in 2 min"
    assert status_line("foo", p) == "foo: running · stops in 2 min"
    # to the second once warned: the countdown must be seen to run down
    for left, text in [(110.0, "1 min 50 s"), (119.2, "2 min"), (60.0, "1 min"),
                       (59.1, "1 min"), (58.9, "59 s"), (0.2, "1 s"), (0.0, "0 s")]:
        assert status_line("foo", replace(p, stops_in_seconds=left), warn_before=120) == \
            f"foo: running · idle, stops in {text}"


def test_connections_and_ssh_state_in_the_line() -> None:
    connected = profile("connected")
    two = replace(connected, sessions=1)
    assert status_line("foo", two) == "foo: running · 2 connections"
    bastion = replace(connected.bastion, ssh="connecting")
    assert status_line("foo", replace(connected, bastion=bastion)) == \
        "foo: running · SSH connecting · 1 connection"
    unknown = replace(connected.bastion, state="unknown")
    assert status_line("foo", replace(profile("stopped"), bastion=unknown)) == \
        "foo: state unknown"


@pytest.mark.parametrize(("seconds", "text"), [
    (0.4, "1 s"), (45.0, "45 s"), (119.2, "2 min"), (3700.0, "1 h 2 min"), (7200.0, "2 h"),
    (-3.0, "0 s")])
def test_durations_round_up_for_a_countdown(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


# ---- the recordings against the live daemon ----------------------------------------------------


def key_paths(value: Any, prefix: str = "") -> set[str]:
    if not isinstance(value, dict):
        return set()
    paths = set()
    for key, inner in value.items():
        path = f"{prefix}.{key}" if prefix else key
        paths |= {path} | key_paths(inner, path)
    return paths


def gist(p: ProfileStatus) -> tuple[object, ...]:
    """What must not differ between a recording and the live daemon in the same state."""
    return (profile_state(p), p.bastion.state, p.bastion.ssh, p.starting, p.connections,
            p.stops_in_seconds is not None, p.auto_stop, p.error and p.error.kind)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Live:
    """The live daemon of one App: full `status` replies, straight from the socket."""

    def __init__(self, app: App) -> None:
        self.app = app

    def status(self) -> dict[str, Any]:
        from bastion_tray.service.control_client import ControlClient

        with ControlClient.connect(app_paths(self.app.env), timeout=10) as client:
            data: dict[str, Any] = client.request("status", timeout=30)
        return data


@pytest.fixture
def live_replies(fresh_sandbox: Sandbox) -> Iterator[dict[str, dict[str, Any]]]:
    """A reply of the real daemon in each state of STATES."""
    replies: dict[str, dict[str, Any]] = {}
    apps = [App(fresh_sandbox, idle_timeout="5m")]
    try:
        app = apps[0]
        live = Live(app)
        replies["stopped"] = json.loads(app.cli("status", "--json", check=True).stdout)
        connect = threading.Thread(target=app.cli, args=("connect", "foo", "db"), daemon=True)
        connect.start()

        def starting() -> dict[str, Any] | None:
            data = live.status()
            foo = data["profiles"]["foo"]
            return data if foo["starting_for_seconds"] is not None and foo["phase"] else None

        replies["starting"] = wait_until(starting, 30, "a status while starting", 0.02)
        connect.join(60)
        replies["ready"] = wait_until(
            lambda: (d := live.status())["profiles"]["foo"]["stops_in_seconds"] is not None
            and d, 10, "the idle countdown")
        host, _, port = replies["ready"]["profiles"]["foo"]["forwards"]["db"]["local"] \
            .rpartition(":")
        with socket.create_connection((host, int(port)), timeout=10):
            replies["connected"] = wait_until(
                lambda: (d := live.status())["profiles"]["foo"]["forwards"]["db"]
                ["active_connections"] == 1 and d, 10, "the open connection")
        # two more daemons of their own, on the bastion that now runs
        apps.append(no_stop := App(fresh_sandbox, extra_bastion={"auto_stop": False},
                                   db_local_port=free_port()))
        no_stop.cli("connect", "foo", "db", check=True)
        replies["auto_stop_off"] = Live(no_stop).status()
        apps.append(untrusted := App(fresh_sandbox, trusted=False, db_local_port=free_port()))
        with no_console_output(fresh_sandbox):  # else it vouches for the key: no error
            untrusted.cli("connect", "foo", "db")
        replies["host_key_error"] = Live(untrusted).status()
        apps.append(late := App(fresh_sandbox, db_local_port=free_port()))
        late.cli("status", "--json", check=True)  # starts its daemon: it finds it running
        replies["link_down"] = Live(late).status()
        yield replies
    finally:
        for each in reversed(apps):
            each.close()


def test_the_recorded_replies_match_the_live_daemon(
        live_replies: dict[str, dict[str, Any]]) -> None:
    """Keeps tests/fixtures/status in sync: every key a recording has, the daemon still sends,
    in the same state; the live replies round-trip too. BASTION_TRAY_RECORD_STATUS=1 records
    them anew, `=link_down,ready` only those (then review the diff)."""
    assert set(live_replies) == set(STATES)
    record = os.environ.get("BASTION_TRAY_RECORD_STATUS", "")
    for state, data in live_replies.items():
        if record == "1" or state in record.split(","):
            write(state, data)
    for state, data in live_replies.items():
        status = Status.from_json(data)
        assert status.to_json() == data, state
        missing = key_paths(reply(state)) - key_paths(data)
        assert not missing, f"{state}: the daemon no longer sends {sorted(missing)}"
        assert gist(status.profiles["foo"]) == gist(profile(state)), state
    new = key_paths(live_replies["ready"]) - key_paths(reply("ready"))
    if new:  # not an error: the status grows; the recordings just do not show it yet
        print(f"keys the recordings lack (BASTION_TRAY_RECORD_STATUS=1 adds them): {sorted(new)}")


def test_recordings_exist_for_every_state() -> None:
    assert sorted(p.stem for p in FOLDER.glob("*.json")) == sorted(STATES)


def test_the_cli_leads_with_the_same_status_line() -> None:
    from bastion_tray.cli.commands.status import describe

    ready = replace(profile("ready"), stops_in_seconds=100.0)
    lines = describe("foo", ready, warn_before=120.0)
    assert lines[0] == status_line("foo", ready, warn_before=120.0) == \
        "foo: running · idle, stops in 1 min 40 s"
    assert lines[1].startswith(f"  instance {ready.bastion.instance_id}: running at ")
    assert any(line.startswith("  forward db: ") and "(listening, 0 active)" in line
               for line in lines)
    error = describe("foo", profile("host_key_error"))
    assert error[0].startswith("foo: error — ")
    assert error[-1] == "    → verify it, then run: bastion-tray trust foo"
