"""Issue 10, the status line: requests waiting for the bastion are counted ("2 waiting"), the
idle warning counts down to the second, and the live line (the demo without a display) says
all of it on a pipe too — a line per change, never a ticker, never silent about the warning.
The pipe is real: a child process writes to it, this test reads it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bastion_tray.core import lifecycle as lc
from bastion_tray.core.status import ProfileStatus
from bastion_tray.core.statusline import LiveLine, status_line
from bastion_tray.sandbox import Sandbox
from tests.fixtures.statuses import profile
from tests.support.app import App, wait_until
from tests.support.fakes import Harness


def typed(h: Harness) -> ProfileStatus:
    return ProfileStatus.from_json(h.status())


# ---- "2 waiting" ------------------------------------------------------------------------------

def test_requests_waiting_for_the_bastion_are_counted_in_the_status_and_the_line() -> None:
    h = Harness()
    h.spawner.hold = {"wait-ssh"}
    h.rt.request()  # a connection through the forward
    h.rt.request(lc.Goal.SSH)  # `ssh foo-bastion`
    h.ticks(1.25)
    assert h.status()["waiting"] == 2
    p = typed(h)
    assert status_line("foo", p) == "foo: starting… 1 s · waiting for SSH · 2 waiting"
    h.spawner.release()
    assert h.status()["waiting"] == 0
    assert "waiting" not in status_line("foo", typed(h))


def test_a_request_during_a_stop_is_counted_until_the_bastion_is_up_again() -> None:
    h = Harness()
    h.rt.request()
    h.ticks(2)
    h.spawner.hold = {"ec2-stop"}
    h.rt.post(lc.StopRequested(h.rt._waiter().id, "stopped by request", force=True))
    h.rt.request()
    assert h.status()["waiting"] == 1 and h.status()["lifecycle"] == "stopping"
    assert status_line("foo", typed(h)).endswith(" · 1 waiting")
    h.spawner.hold = set()
    h.spawner.release()
    h.ticks(3)
    assert h.status()["waiting"] == 0 and h.status()["bastion"]["ssh"] == "connected"


def test_a_reply_without_waiting_reads_as_none_and_writes_back_without_it() -> None:
    data = json.loads(json.dumps(profile("ready").to_json()))
    assert "waiting" not in data  # recorded before the key existed
    p = ProfileStatus.from_json(data)
    assert p.waiting == 0 and p.to_json() == data
    assert ProfileStatus.from_json({**data, "waiting": 3}).waiting == 3


# ---- the live line ----------------------------------------------------------------------------

WARN = 120.0
ROOT = Path(__file__).resolve().parent.parent


def timeline() -> list[tuple[str, ProfileStatus]]:
    """(what happens, the status then), one a second, as a demo run shows them."""
    stopped, ready = profile("stopped"), profile("ready")
    out: list[tuple[str, ProfileStatus]] = [("stopped", stopped)] * 3
    starting = replace(profile("starting"), phase="starting instance", waiting=1)
    out += [("starting", replace(starting, starting_for_seconds=float(t))) for t in range(2)]
    out += [("waiting for SSH", replace(starting, phase="waiting for SSH", waiting=2,
                                        starting_for_seconds=float(t))) for t in range(2, 5)]
    out += [("counting down", replace(ready, stops_in_seconds=300.0 - t)) for t in range(241)]
    out.append(("teammates", replace(ready, stops_in_seconds=None, waiting_for_others=True,
                                     in_use_by=("bob@laptop-b",))))
    return out


def lines_written_to_a_pipe() -> list[str]:
    """The live line as a child process writes it to a real pipe (stdout=PIPE: no tty)."""
    code = ("import sys\n"
            "from tests.test_status_truth_line import feed\n"
            "feed(sys.stdout)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True, cwd=ROOT)
    return proc.stdout.splitlines()


def feed(stream: Any) -> None:
    live = LiveLine(stream)
    for _, p in timeline():
        live.update("foo", p, warn_before=WARN)
    live.end()


def test_on_a_pipe_it_writes_a_line_per_change_with_the_warning_counting_down() -> None:
    lines = lines_written_to_a_pipe()
    assert lines[:3] == ["foo: stopped", "foo: starting… 0 s · starting instance · 1 waiting",
                         "foo: starting… 2 s · waiting for SSH · 2 waiting"]
    countdown = lines[3:-1]
    assert countdown[:3] == ["foo: running · stops in 5 min", "foo: running · stops in 4 min",
                             "foo: running · stops in 3 min"]
    warned = [line for line in countdown if "idle, stops in" in line]
    assert warned[0] == "foo: running · idle, stops in 2 min"  # the warning starts: said
    assert warned[1:] == [f"foo: running · idle, stops in {left}" for left in (
        "1 min 50 s", "1 min 40 s", "1 min 30 s", "1 min 20 s", "1 min 10 s", "1 min")]
    assert len(countdown) == 3 + 7  # a minute apart, then 10 s apart: never every second
    assert lines[-1] == "foo: in use by bob@laptop-b · you are idle"
    assert not any("\r" in line or "\033" in line for line in lines)


def test_on_a_terminal_it_rewrites_one_line_in_place() -> None:
    out = io.StringIO()
    live = LiveLine(out, tty=True)
    for _, p in timeline()[:5]:
        assert live.update("foo", p, warn_before=WARN)
    live.end()
    text = out.getvalue()
    assert text.count("\r\033[K") == 5 and text.endswith("foo: starting… 1 s · starting "
                                                         "instance · 1 waiting\n")


def test_a_line_of_another_kind_follows_the_same_rules() -> None:
    out = io.StringIO()  # not a tty: a log
    live = LiveLine(out)
    assert live.say("foo: daemon not answering (restarting)")
    assert not live.say("foo: daemon not answering (restarting)")
    assert live.update("foo", profile("stopped"))
    assert out.getvalue().splitlines() == ["foo: daemon not answering (restarting)",
                                           "foo: stopped"]


# ---- the CLI's status on a pipe, against the real daemon -----------------------------------

@pytest.mark.timeout(120)
def test_status_on_a_pipe_shows_the_idle_warning_to_the_second(fresh_sandbox: Sandbox) -> None:
    app = App(fresh_sandbox, idle_timeout="90s", warn_before="80s")
    try:
        app.cli("connect", "foo", "db", check=True)
        wait_until(lambda: (app.status()["stops_in_seconds"] or 999) <= 80, 30,
                   "the idle warning")
        proc = subprocess.run([sys.executable, "-m", "bastion_tray", "status"], env=app.env,
                              capture_output=True, text=True, timeout=60)  # stdout: a pipe
        assert proc.returncode == 0, proc.stderr
        first = proc.stdout.splitlines()[0]
        assert first.startswith("foo: running · idle, stops in 1 min "), first
        assert first.endswith(" s") and "\r" not in proc.stdout
        time.sleep(1.1)  # a second later it says a second less (rounded up, never early)
        again = app.cli("status", check=True).stdout.splitlines()[0]
        assert again != first and again.startswith("foo: running · idle, stops in ")
    finally:
        app.close()
