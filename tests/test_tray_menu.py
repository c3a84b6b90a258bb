"""The tray without a display: the pure menu model for every state, the notices, the desktop
commands; then each menu action against a real daemon in the sandbox VPC."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion_tray.core.paths import app_paths
from bastion_tray.sandbox import Sandbox
from bastion_tray.ui import desktop
from bastion_tray.ui.actions import ActionRunner, TrayHooks
from bastion_tray.ui.model import (
    Action,
    IconState,
    Item,
    Separator,
    aged,
    any_starting,
    build_menu,
    find,
    icon_state,
    status_line,
    tooltip,
)
from bastion_tray.ui.notices import Coalescer, Deduper, Notice, notice_for_event
from tests.support.app import App, alive, wait_until


def snap(state: str = "stopped", *, ssh: str = "disconnected", listening: bool = False,
         active: int = 0, **extra: Any) -> dict[str, Any]:
    """One profile's status entry, shaped like ProfileRuntime.snapshot()."""
    base: dict[str, Any] = {
        "bastion": {"instance_id": "i-0abc", "state": state, "ssh": ssh,
                    "host": "127.0.0.9:2222" if state == "running" else None},
        "forwards": {"db": {"local": "127.0.0.1:13306", "listening": listening,
                            "active_connections": active}},
        "hosts": ["appserver"], "sessions": 0, "idle_seconds": None, "stops_in_seconds": None,
        "auto_stop": True, "phase": None, "starting_for_seconds": None,
        "started_by_daemon": False, "error": None}
    return {**base, **extra}


def menu_of(*profiles: tuple[str, dict[str, Any]], **kw: Any) -> tuple[Item | Separator, ...]:
    return build_menu({"profiles": dict(profiles), "daemon": {"pid": 1}}, **kw)


def flags(menu: tuple[Item | Separator, ...], prefix: str) -> tuple[bool, bool | None]:
    item = find(menu, prefix)
    return item.enabled, item.checked


RUNNING = {"state": "running", "ssh": "connected", "listening": True}


# ---- the menu model, state by state --------------------------------------------------------

def test_stopped_profile_offers_connect_and_start_only() -> None:
    menu = menu_of(("foo", snap()))
    assert find(menu, "foo:").label == "foo: stopped" and not find(menu, "foo:").enabled
    assert find(menu, "Connect db").label == "Connect db (127.0.0.1:13306)"
    assert find(menu, "Connect db").action == Action("connect", "foo", "db")
    assert flags(menu, "Connect db") == (True, False)
    assert flags(menu, "Start bastion") == (True, None)
    assert flags(menu, "Stop bastion now")[0] is False
    assert flags(menu, "Keep running 1 h")[0] is False
    shell = find(menu, "Open shell")
    assert shell.submenu == (Item("appserver", Action("shell", "foo", "appserver")),)
    assert find(menu, "Quit").label == "Quit" and find(menu, "Quit").action == Action("quit")
    assert icon_state({"profiles": {"foo": snap()}}) is IconState.STOPPED


def test_starting_profile_shows_seconds_and_phase_and_disables_connect() -> None:
    s = snap("pending", starting_for_seconds=23.7, phase="waiting for SSH")
    menu = menu_of(("foo", s))
    assert find(menu, "foo:").label == "foo: starting… 23 s · waiting for SSH"
    assert flags(menu, "Connect db")[0] is False
    assert flags(menu, "Start bastion")[0] is False
    assert flags(menu, "Stop bastion now")[0] is True
    assert flags(menu, "Keep running")[0] is False
    assert icon_state({"profiles": {"foo": s}}) is IconState.STARTING


def test_ready_without_connections_counts_down_and_can_be_kept() -> None:
    s = snap(**RUNNING, stops_in_seconds=1079.6, started_by_daemon=True)
    menu = menu_of(("foo", s))
    assert find(menu, "foo:").label == "foo: running · stops in 18 min"
    assert flags(menu, "Connect db") == (True, True)
    assert flags(menu, "Start bastion")[0] is False
    assert flags(menu, "Stop bastion now")[0] is True
    assert flags(menu, "Keep running 1 h") == (True, None)
    assert find(menu, "Quit").label == "Quit (stops the bastion of foo)"
    assert icon_state({"profiles": {"foo": s}}) is IconState.READY


def test_ready_with_connections_counts_them_and_shows_connected() -> None:
    s = snap(**{**RUNNING, "active": 2})
    assert status_line("foo", s) == "foo: running · 2 connections"
    assert status_line("foo", {**s, "sessions": 1}) == "foo: running · 3 connections"
    assert icon_state({"profiles": {"foo": s}}) is IconState.CONNECTED


@pytest.mark.parametrize(("stops_in", "text"), [
    (119.2, "stops in 2 min"), (45.0, "stops in 45 s"), (0.4, "stops in 1 s"),
    (3700.0, "stops in 1 h 2 min"), (7200.0, "stops in 2 h")])
def test_idle_countdown_wording(stops_in: float, text: str) -> None:
    assert status_line("foo", snap(**RUNNING, stops_in_seconds=stops_in)) == \
        f"foo: running · {text}"


def test_running_without_auto_stop_cannot_be_kept() -> None:
    s = snap(**RUNNING, auto_stop=False)
    assert status_line("foo", s) == "foo: running · auto-stop off"
    assert flags(menu_of(("foo", s)), "Keep running")[0] is False
    assert status_line("foo", snap("running")) == "foo: running · not connected"


def test_error_shows_a_short_reason_and_allows_a_retry() -> None:
    message = ("the bastion 127.0.0.9:2222 presents an unknown host key SHA256:Zm9vYmFyYmF6"
               "cXV4 that is in no known_hosts file")
    s = snap("running", error={"kind": "host_key", "message": message,
                               "hint": "verify it, then run: bastion-tray trust foo"})
    line = status_line("foo", s)
    assert line.startswith("foo: error — the bastion 127.0.0.9:2222 presents") and \
        line.endswith("…") and len(line) < 80
    assert flags(menu_of(("foo", s)), "Start bastion")[0] is True
    assert icon_state({"profiles": {"foo": s, "bar": snap(**RUNNING)}}) is IconState.ERROR


def test_several_profiles_get_a_submenu_each_labelled_with_its_status() -> None:
    menu = menu_of(("foo", snap(**RUNNING, stops_in_seconds=600, started_by_daemon=True)),
                   ("bar", snap(started_by_daemon=True)))
    heads = [e for e in menu if isinstance(e, Item) and e.submenu]
    assert [h.label for h in heads] == ["bar: stopped", "foo: running · stops in 10 min"]
    assert find(heads[0].submenu or (), "Connect db").action == Action("connect", "bar", "db")
    assert find(heads[1].submenu or (), "Stop bastion now").enabled
    assert find(menu, "Quit").label == "Quit (stops the bastion of foo)"
    s = snap(**RUNNING, started_by_daemon=True)
    assert find(menu_of(("a", s), ("b", s)), "Quit").label == "Quit (stops the bastions of a, b)"


def test_daemon_gone_disables_what_needs_it_and_says_so() -> None:
    status = {"profiles": {"foo": snap(**RUNNING)}}
    menu = build_menu(status, connected=False)
    assert menu[0] == Item("Daemon not running — reconnecting…", enabled=False)
    assert flags(menu, "Connect db")[0] is False and flags(menu, "Stop bastion now")[0] is False
    assert flags(menu, "Open config file")[0] is True and flags(menu, "Show log")[0] is True
    assert icon_state(status, connected=False) is IconState.OFFLINE
    assert "reconnecting" in tooltip(status, connected=False)
    empty = build_menu(None, connected=False, offline_text="Connecting to the daemon…")
    assert [e.label for e in empty if isinstance(e, Item)] == [
        "Connecting to the daemon…", "Open config file", "Show log", "Quit"]


def test_between_heartbeats_the_menu_ages_the_status_it_has() -> None:
    status = {"profiles": {"foo": snap("pending", starting_for_seconds=3.2),
                           "bar": snap(**RUNNING, stops_in_seconds=55.0)}}
    later = aged(status, 10.0)
    assert later is not None and any_starting(later) and not any_starting({"profiles": {}})
    assert status_line("foo", later["profiles"]["foo"]) == "foo: starting… 13 s"
    assert status_line("bar", later["profiles"]["bar"]) == "bar: running · stops in 45 s"
    assert status["profiles"]["foo"]["starting_for_seconds"] == 3.2  # not changed in place


def test_without_notifications_the_last_notice_is_a_menu_line() -> None:
    notice = Notice("foo: idle", "foo stops in 2 min — choose Keep running to stay").line
    menu = menu_of(("foo", snap(**RUNNING)), notice=notice)
    assert menu[0] == Item("foo: idle: foo stops in 2 min — choose Keep running to stay",
                           enabled=False)
    assert notice in tooltip({"profiles": {"foo": snap()}}, notice=notice)


def test_the_pystray_adapter_keeps_labels_flags_and_actions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSTRAY_BACKEND", "dummy")  # no display needed
    import pystray

    from bastion_tray.ui.tray import to_pystray

    chosen: list[Action] = []
    model = menu_of(("foo", snap(**RUNNING)))
    menu = to_pystray(pystray, model, chosen.append)
    items = list(menu.items)
    assert [i.text for i in items if i is not pystray.Menu.SEPARATOR] == \
        [e.label for e in model if isinstance(e, Item)]
    connect = next(i for i in items if i.text.startswith("Connect db"))
    assert connect.checked is True and connect.enabled
    assert next(i for i in items if i.text == "Start bastion").enabled is False
    connect(None)
    next(i for i in next(i for i in items if i.text == "Open shell").submenu.items)(None)
    assert chosen == [Action("connect", "foo", "db"), Action("shell", "foo", "appserver")]


def test_the_tray_without_a_display_says_what_it_needs(tmp_path: Path) -> None:
    import subprocess

    config = tmp_path / "config.toml"
    config.write_text('[profiles.foo]\nregion = "eu-west-1"\n[profiles.foo.bastion]\n'
                      'instance_id = "i-0123456789abcdef0"\nuser = "ec2-user"\n')
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "PYSTRAY_BACKEND")}
    env["BASTION_TRAY_HOME"] = str(tmp_path / "home")
    proc = subprocess.run([sys.executable, "-m", "bastion_tray", "--config", str(config),
                           "tray"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "no graphical session" in proc.stderr and "DISPLAY" in proc.stderr
    assert not (tmp_path / "home" / "run" / "daemon.pid").exists()  # no daemon for nothing


# ---- notices -------------------------------------------------------------------------------

def test_notices_for_the_events_that_deserve_one() -> None:
    ready = notice_for_event({"type": "ready", "profile": "foo", "seconds": 12.34,
                              "host": "127.0.0.9:2222"})
    assert ready == Notice("foo: bastion ready", "ready in 12.3 s (127.0.0.9:2222)")
    warn = notice_for_event({"type": "warn", "profile": "foo", "stops_in": 120})
    assert warn is not None and warn.message == \
        "foo stops in 2 min — choose Keep running to stay"
    stopped = notice_for_event({"type": "stopped", "profile": "foo", "state": "stopped",
                                "reason": "idle 30m, no connections"})
    assert stopped is not None and "idle 30m" in stopped.message
    sso = notice_for_event({"type": "error", "profile": "foo", "kind": "credentials",
                            "message": "the SSO session of profile foo has expired",
                            "hint": "run: aws sso login --profile foo"})
    assert sso is not None and sso.message.endswith("→ run: aws sso login --profile foo")
    for quiet in ("heartbeat", "changed", "progress", "forward", "instance"):
        assert notice_for_event({"type": quiet, "profile": "foo"}) is None


def test_a_notice_repeated_within_the_window_is_dropped() -> None:
    now = [0.0]
    dedupe = Deduper(window=10, clock=lambda: now[0])
    assert dedupe.fresh(Notice("foo: error", "boom\n→ fix it"))
    assert not dedupe.fresh(Notice("foo: connect failed", "boom\n→ fix it"))
    now[0] = 11.0
    assert dedupe.fresh(Notice("foo: error", "boom"))


def test_notices_arriving_together_become_one() -> None:
    now = [0.0]
    coalesce = Coalescer(window=5, clock=lambda: now[0])
    ready = Notice("foo: bastion ready", "ready in 1.8 s (127.0.0.9:2222)")
    assert coalesce.combine(ready) == ready
    now[0] = 0.3
    assert coalesce.combine(Notice("foo: db connected", "db is ready at 127.0.0.1:13306")) == \
        Notice("foo: bastion ready · db connected",
               "ready in 1.8 s (127.0.0.9:2222)\ndb is ready at 127.0.0.1:13306")
    now[0] = 60.0
    assert coalesce.combine(Notice("bar: idle", "x")) == Notice("bar: idle", "x")


# ---- desktop commands ------------------------------------------------------------------------

def test_terminal_choice_per_platform() -> None:
    cmd = ["python", "-m", "bastion_tray", "shell", "foo", "app"]
    on_path = {"xterm": "/usr/bin/xterm", "wt": "C:/wt.exe"}.get
    assert desktop.terminal_argv(cmd, ["kitty", "-e"]) == ["kitty", "-e", *cmd]
    assert desktop.terminal_argv(cmd, platform="linux", which=on_path) == \
        ["/usr/bin/xterm", "-e", *cmd]
    gnome = desktop.terminal_argv(cmd, platform="linux",
                                  which={"gnome-terminal": "/g"}.get)
    assert gnome == ["/g", "--", *cmd]
    mac = desktop.terminal_argv(cmd, platform="darwin")
    assert mac[:2] == ["osascript", "-e"] and 'do script "python -m bastion_tray' in mac[2]
    assert desktop.terminal_argv(cmd, platform="win32", which=on_path)[0] == "wt"
    assert desktop.terminal_argv(cmd, platform="win32", which=lambda _: None)[:3] == \
        ["cmd", "/c", "start"]
    with pytest.raises(desktop.DesktopError, match="no terminal found"):
        desktop.terminal_argv(cmd, platform="linux", which=lambda _: None)


def test_opener_and_clipboard_per_platform() -> None:
    p = Path("/x/config.toml")
    assert desktop.opener_argv(p, platform="darwin") == ["open", str(p)]
    assert desktop.opener_argv(p, platform="win32") is None  # os.startfile
    assert desktop.opener_argv(p, platform="linux", which={"xdg-open": "/xo"}.get) == \
        ["/xo", str(p)]
    tools = {"wl-copy": "/wl", "xclip": "/xc"}.get
    assert desktop.clipboard_argv(platform="linux", which=tools,
                                  env={"WAYLAND_DISPLAY": "w", "DISPLAY": ":1"}) == ["/wl"]
    assert desktop.clipboard_argv(platform="linux", which=tools, env={"DISPLAY": ":1"}) == \
        ["/xc", "-selection", "clipboard"]
    assert desktop.clipboard_argv(platform="linux", which=tools, env={}) is None
    assert desktop.clipboard_argv(platform="darwin", which=lambda n: n) == ["pbcopy"]


# ---- the actions against a real daemon -------------------------------------------------------

def stub(directory: Path, name: str, body: str) -> Path:
    """A fake desktop tool on PATH that records how it was called."""
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def tray_env(fresh_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch,
             tmp_path: Path) -> Iterator[tuple[App, ActionRunner, list[Notice], Path]]:
    """The app's environment in this process, a runner, the notices it sent, a stub dir."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    app = App(fresh_sandbox, idle_timeout="5m",
              extra_settings={"terminal": [str(stubs / "term"), "--"]})
    for key, value in app.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", f"{stubs}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DISPLAY", ":99")  # for the clipboard tool choice only
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    notices: list[Notice] = []
    runner = ActionRunner(app.config, app_paths(), TrayHooks(notify=notices.append))
    try:
        yield app, runner, notices, stubs
    finally:
        app.close()


def test_connect_keep_stop_start_reach_the_daemon(tray_env: Any) -> None:
    app, runner, notices, _ = tray_env
    runner.run(Action("connect", "foo", "db"))
    status = app.status()
    assert status["forwards"]["db"]["listening"] and status["bastion"]["state"] == "running"
    assert status["bastion"]["ssh"] == "connected"
    assert notices[-1].title == "foo: db connected"
    assert status["forwards"]["db"]["local"] in notices[-1].message
    menu = build_menu({"profiles": {"foo": status}})
    assert flags(menu, "Connect db") == (True, True)
    assert find(menu, "foo:").label.startswith("foo: running · stops in 5 min")

    runner.run(Action("keep", "foo"))
    assert app.status()["stops_in_seconds"] > 3500
    assert notices[-1].title == "foo: kept running"

    assert runner.run(Action("stop", "foo")) is None
    assert app.status()["bastion"]["state"] == "stopped"
    runner.run(Action("start", "foo"))
    status = app.status()
    assert status["bastion"]["state"] == "running" and status["bastion"]["ssh"] == "connected"


def test_unknown_host_key_notifies_the_trust_command(fresh_sandbox: Sandbox,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    app = App(fresh_sandbox, trusted=False)
    try:
        for key, value in app.env.items():
            monkeypatch.setenv(key, value)
        notices: list[Notice] = []
        ActionRunner(app.config, app_paths(), TrayHooks(notify=notices.append)).run(
            Action("connect", "foo", "db"))
        assert notices[-1].title == "foo: connect failed"
        assert "bastion-tray trust foo" in notices[-1].message, notices
        assert app.status()["error"]["kind"] == "host_key"
    finally:
        app.close()


def test_desktop_actions_run_the_right_programs(tray_env: Any) -> None:
    app, runner, notices, stubs = tray_env
    record = stubs / "calls"
    for tool in ("term", "xdg-open"):  # one line per call, arguments split by \037
        stub(stubs, tool, f"printf '%s\\037' \"$@\" >> {record}; echo >> {record}")
    stub(stubs, "xclip", f"cat > {stubs / 'clipboard'}")
    from bastion_tray.cli.commands.ssh_config import blocks
    from bastion_tray.core.config import load_config

    config = load_config(app.config)
    runner.run(Action("shell", "foo", "appserver"))
    runner.run(Action("show-ssh-config", "foo"))
    runner.run(Action("copy-ssh-config", "foo"))
    runner.run(Action("open-config"))
    calls = [line.split("\037")[:-1] for line in record.read_text().splitlines()]
    assert calls[0][:3] == ["--", "/bin/sh", "-c"]
    assert calls[0][5:] == [sys.executable, "-m", "bastion_tray", "--config",
                            str(app.config.resolve()), "shell", "foo", "appserver"]
    shown = runner.ssh_config_file("foo")
    assert calls[1:] == [[str(shown)], [str(app.config)]]
    assert shown.read_text() == blocks(config, config.profile("foo")) == \
        (stubs / "clipboard").read_text()
    assert [n.title for n in notices] == ["foo: ssh config copied"]

    stub(stubs, "xdg-open", "echo 'xdg-open: no method available for opening it' >&2; exit 3")
    runner.run(Action("open-config"))
    assert notices[-1] == Notice("open config file failed", "xdg-open failed (exit 3): "
                                 "xdg-open: no method available for opening it")


def test_quit_shuts_the_daemon_down_and_it_stops_the_bastion_it_started(tray_env: Any) -> None:
    app, runner, _, _ = tray_env
    calls: list[str] = []
    runner.hooks.before_quit = lambda: calls.append("before")
    runner.hooks.after_quit = lambda: calls.append("after")
    runner.run(Action("connect", "foo", "db"))
    pid = app.daemon_pid()
    assert pid and app.status()["started_by_daemon"]
    runner.run(Action("quit"))
    assert calls == ["before", "after"]
    wait_until(lambda: not alive(pid), 20, "the daemon to exit")
    assert app.instance_state() == "stopped"
    runner.run(Action("quit"))  # no daemon any more: quitting still quits
    assert calls == ["before", "after", "before", "after"]


def test_the_watcher_follows_events_and_survives_a_daemon_crash(tray_env: Any) -> None:
    from bastion_tray.cli import session
    from bastion_tray.core.config import load_config
    from bastion_tray.ui.watch import StatusWatcher

    app, runner, _, _ = tray_env
    config = load_config(app.config)
    seen: list[tuple[bool, IconState]] = []
    events: list[dict[str, Any]] = []
    watcher = StatusWatcher(lambda: session.connect(config, app_paths()),
                            lambda s, ok, _why: seen.append((ok, icon_state(s, ok))),
                            events.append, first_retry=0.2)
    with watcher:
        wait_until(lambda: watcher.connected, 15, "the first status")
        runner.run(Action("connect", "foo", "db"))
        wait_until(lambda: any(e["type"] == "ready" for e in events), 10, "a ready event")
        ready = next(e for e in events if e["type"] == "ready")
        assert notice_for_event(ready).title == "foo: bastion ready"  # type: ignore[union-attr]
        assert seen[-1] == (True, IconState.READY)
        first = app.daemon_pid()
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: (False, IconState.OFFLINE) in seen, 10, "the offline state")
        wait_until(lambda: watcher.connects >= 2 and watcher.connected, 20, "a reconnect")
        assert app.daemon_pid() not in (None, first)
