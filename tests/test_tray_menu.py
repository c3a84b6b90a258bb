"""The tray without a display: the pure menu model for every state, fed replies recorded from
the real daemon (tests/fixtures/status, kept in sync by tests/test_status_model.py), the
desktop commands; then each menu action against a real daemon in the sandbox VPC. The
notices are tests/test_notices.py's."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bastion_tray.core.paths import app_paths
from bastion_tray.core.status import ProfileStatus, Status
from bastion_tray.core.statusline import status_line
from bastion_tray.sandbox import Sandbox
from bastion_tray.ui import desktop
from bastion_tray.ui.actions import ActionRunner, TrayHooks
from bastion_tray.ui.model import (
    Action,
    IconState,
    Item,
    Separator,
    build_menu,
    find,
    icon_state,
    ticking,
    tooltip,
)
from bastion_tray.ui.notices import Notice, notice_for_event
from tests.fixtures.statuses import profile
from tests.support.app import App, alive, wait_until
from tests.support.console import no_console_output


def of(**profiles: ProfileStatus) -> Status:
    return Status(profiles=profiles)


def menu_of(*profiles: tuple[str, ProfileStatus], **kw: Any) -> tuple[Item | Separator, ...]:
    return build_menu(Status(profiles=dict(profiles)), **kw)


def flags(menu: tuple[Item | Separator, ...], prefix: str) -> tuple[bool, bool | None]:
    item = find(menu, prefix)
    return item.enabled, item.checked


# ---- the menu model, state by state --------------------------------------------------------

def test_stopped_profile_offers_connect_and_start_only() -> None:
    stopped = profile("stopped")
    menu = menu_of(("foo", stopped))
    assert find(menu, "foo:").label == "foo: stopped" and not find(menu, "foo:").enabled
    assert find(menu, "Connect db").label == f"Connect db ({stopped.forwards['db'].local})"
    assert find(menu, "Connect db").action == Action("connect", "foo", "db")
    assert flags(menu, "Connect db") == (True, False)
    assert flags(menu, "Start bastion") == (True, None)
    assert flags(menu, "Stop bastion now")[0] is False
    assert flags(menu, "Keep running 1 h")[0] is False
    shell = find(menu, "Open shell")
    assert shell.submenu == (Item("appserver", Action("shell", "foo", "appserver")),)
    assert find(menu, "Quit").label == "Quit" and find(menu, "Quit").action == Action("quit")
    assert icon_state(of(foo=stopped)) is IconState.STOPPED


def test_starting_profile_shows_seconds_and_phase_and_disables_connect() -> None:
    s = replace(profile("starting"), starting_for_seconds=23.7, phase="waiting for SSH")
    menu = menu_of(("foo", s))
    assert find(menu, "foo:").label == "foo: starting… 23 s · waiting for SSH"
    assert flags(menu, "Connect db")[0] is False
    assert flags(menu, "Start bastion")[0] is False
    assert flags(menu, "Stop bastion now")[0] is True
    assert flags(menu, "Keep running")[0] is False
    assert icon_state(of(foo=s)) is IconState.STARTING
    assert icon_state(of(foo=profile("starting"))) is IconState.STARTING  # as recorded


def test_ready_without_connections_counts_down_and_can_be_kept() -> None:
    s = replace(profile("ready"), stops_in_seconds=1079.6)
    menu = menu_of(("foo", s))
    assert find(menu, "foo:").label == "foo: running · stops in 18 min"
    assert flags(menu, "Connect db") == (True, True)
    assert flags(menu, "Start bastion")[0] is False
    assert flags(menu, "Stop bastion now")[0] is True
    assert flags(menu, "Keep running 1 h") == (True, None)
    assert find(menu, "Quit").label == "Quit (stops the bastion of foo)"  # it started it
    assert icon_state(of(foo=s)) is IconState.READY


def test_the_idle_warning_shows_in_the_menu_and_the_tooltip() -> None:
    s = replace(profile("ready"), stops_in_seconds=95.0)
    menu = menu_of(("foo", s), warn_before={"foo": 120.0})
    assert find(menu, "foo:").label == "foo: running · idle, stops in 1 min 35 s"
    assert "foo: running · idle, stops in 1 min 35 s" in tooltip(of(foo=s),
                                                                 warn_before={"foo": 120})
    assert find(menu_of(("foo", s)), "foo:").label == "foo: running · stops in 2 min"


def test_ready_with_connections_counts_them_and_shows_connected() -> None:
    s = profile("connected")
    assert status_line("foo", s) == "foo: running · 1 connection"
    assert status_line("foo", replace(s, sessions=2)) == "foo: running · 3 connections"
    assert icon_state(of(foo=s)) is IconState.CONNECTED
    assert find(menu_of(("foo", s)), "foo:").label == "foo: running · 1 connection"


# ---- issue 10: the icon follows the link; never green (or blue) while SSH is down ----------

@pytest.mark.parametrize("recording", ["ready", "connected", "auto_stop_off"])
@pytest.mark.parametrize(("ssh", "state"), [("connected", None),
                                            ("connecting", IconState.STARTING),
                                            ("disconnected", IconState.LINK_DOWN)])
def test_green_or_blue_only_while_ssh_is_connected(recording: str, ssh: str,
                                                   state: IconState | None) -> None:
    p = profile(recording)
    p = replace(p, bastion=replace(p.bastion, ssh=ssh))
    shown = icon_state(of(foo=p))
    if state is None:  # the recorded states themselves: green, or blue with a connection
        assert shown is (IconState.CONNECTED if p.connections else IconState.READY)
    else:
        assert shown is state


def test_after_a_daemon_restart_a_running_bastion_without_its_link_is_not_green() -> None:
    p = profile("link_down")  # recorded: a daemon started while the bastion runs
    assert (p.bastion.state, p.bastion.ssh, p.starting) == ("running", "disconnected", False)
    assert icon_state(of(foo=p)) is IconState.LINK_DOWN
    assert status_line("foo", p).startswith("foo: running · not connected · stops in ")
    menu = menu_of(("foo", p))
    assert flags(menu, "Start bastion")[0] is True  # it connects the link again
    assert flags(menu, "Stop bastion now")[0] is True


def test_ssh_foo_bastion_sessions_without_the_link_are_not_blue() -> None:
    # `ssh foo-bastion` pipes its bytes to the bastion's sshd, not through the daemon's link
    p = replace(profile("link_down"), sessions=1, stops_in_seconds=None, idle_seconds=None)
    assert icon_state(of(foo=p)) is IconState.LINK_DOWN
    assert status_line("foo", p) == "foo: running · not connected · 1 connection"


def test_one_bastion_without_its_link_keeps_the_icon_from_green_for_all() -> None:
    both = of(foo=profile("connected"), bar=profile("link_down"))
    assert icon_state(both) is IconState.LINK_DOWN
    assert icon_state(of(foo=profile("connected"), bar=profile("stopped"))) is \
        IconState.CONNECTED
    assert icon_state(of(foo=profile("starting"), bar=profile("link_down"))) is \
        IconState.STARTING
    assert icon_state(of(foo=profile("host_key_error"), bar=profile("link_down"))) is \
        IconState.ERROR


def test_the_link_down_icon_has_a_picture_until_its_own_is_drawn() -> None:
    from bastion_tray.ui import icons

    image = icons.load(IconState.LINK_DOWN, 32)
    assert image.size == (32, 32)
    assert icons.drawn(IconState.LINK_DOWN) in (IconState.LINK_DOWN, IconState.STARTING)
    assert icons.drawn(IconState.READY) is IconState.READY
    # the screen test tells states apart by picture: a stand-in must come after its original
    order = list(IconState)
    for state, stand_in in icons.STAND_INS.items():
        assert order.index(stand_in) < order.index(state)


def test_running_without_auto_stop_cannot_be_kept() -> None:
    s = profile("auto_stop_off")
    assert status_line("foo", s) == "foo: running · auto-stop off"
    assert flags(menu_of(("foo", s)), "Keep running")[0] is False
    lost = replace(s, bastion=replace(s.bastion, ssh="disconnected"))
    assert status_line("foo", lost) == "foo: running · not connected · auto-stop off"


def test_error_shows_a_short_reason_and_allows_a_retry() -> None:
    s = profile("host_key_error")
    line = status_line("foo", s)
    assert s.error is not None and s.error.kind == "host_key"
    assert line.startswith("foo: error — unknown host key for bastion ") and \
        line.endswith("…") and len(line) < 80
    assert flags(menu_of(("foo", s)), "Start bastion")[0] is True
    assert icon_state(of(foo=s, bar=profile("ready"))) is IconState.ERROR


def test_several_profiles_get_a_submenu_each_labelled_with_its_status() -> None:
    menu = menu_of(("foo", replace(profile("ready"), stops_in_seconds=600)),
                   ("bar", replace(profile("stopped"), started_by_daemon=True)))
    heads = [e for e in menu if isinstance(e, Item) and e.submenu]
    assert [h.label for h in heads] == ["bar: stopped", "foo: running · stops in 10 min"]
    assert find(heads[0].submenu or (), "Connect db").action == Action("connect", "bar", "db")
    assert find(heads[1].submenu or (), "Stop bastion now").enabled
    assert find(menu, "Quit").label == "Quit (stops the bastion of foo)"
    s = profile("ready")
    assert find(menu_of(("a", s), ("b", s)), "Quit").label == "Quit (stops the bastions of a, b)"
    assert find(menu_of(("a", profile("auto_stop_off"))), "Quit").label == \
        "Quit (closes the forwards)"


def test_daemon_gone_disables_what_needs_it_and_says_so() -> None:
    status = of(foo=profile("ready"))
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
    status = of(foo=replace(profile("starting"), starting_for_seconds=3.2, phase=None),
                bar=replace(profile("ready"), stops_in_seconds=55.0))
    later = status.aged(10.0)
    assert status_line("foo", later.profiles["foo"]) == "foo: starting… 13 s"
    assert status_line("bar", later.profiles["bar"]) == "bar: running · stops in 45 s"


def test_the_tray_redraws_every_second_while_starting_or_during_the_idle_warning() -> None:
    warn = {"foo": 120.0}
    assert ticking(of(foo=profile("starting")), warn)
    assert ticking(of(foo=replace(profile("ready"), stops_in_seconds=110.0)), warn)
    assert not ticking(of(foo=replace(profile("ready"), stops_in_seconds=1000.0)), warn)
    assert not ticking(of(foo=replace(profile("ready"), stops_in_seconds=110.0)))
    assert not ticking(of(foo=profile("stopped")), warn) and not ticking(None, warn)
    aged = of(foo=replace(profile("ready"), stops_in_seconds=125.0)).aged(10.0)
    assert ticking(aged, warn)  # the warning began between two events


def test_without_notifications_the_last_notice_is_a_menu_line() -> None:
    notice = Notice("foo: idle", "foo stops in 2 min — choose Keep running to stay").line
    menu = menu_of(("foo", profile("ready")), notice=notice)
    assert menu[0] == Item("foo: idle: foo stops in 2 min — choose Keep running to stay",
                           enabled=False)
    assert notice in tooltip(of(foo=profile("stopped")), notice=notice)


def test_the_pystray_adapter_keeps_labels_flags_and_actions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSTRAY_BACKEND", "dummy")  # no display needed
    import pystray

    from bastion_tray.ui.tray import to_pystray

    chosen: list[Action] = []
    model = menu_of(("foo", profile("ready")))
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
    assert notices[-1].title == "foo: db connected" and notices[-1].icon is IconState.CONNECTED
    assert status["forwards"]["db"]["local"] in notices[-1].message
    menu = build_menu(Status.from_json({"profiles": {"foo": status}}))
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
        with no_console_output(fresh_sandbox):  # else it vouches for the key: no error
            ActionRunner(app.config, app_paths(), TrayHooks(notify=notices.append)).run(
                Action("connect", "foo", "db"))
        assert notices[-1].title == "foo: connect failed" and notices[-1].icon is IconState.ERROR
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
    from bastion_tray.core.config import load_config
    from bastion_tray.service.sshconfig import ssh_config_blocks

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
    assert shown.read_text() == ssh_config_blocks(config, config.profile("foo")) == \
        (stubs / "clipboard").read_text()
    assert [n.title for n in notices] == ["foo: ssh config copied"]

    stub(stubs, "xdg-open", "echo 'xdg-open: no method available for opening it' >&2; exit 3")
    runner.run(Action("open-config"))
    assert notices[-1] == Notice("open config file failed", "xdg-open failed (exit 3): "
                                 "xdg-open: no method available for opening it",
                                 IconState.ERROR)


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
    from bastion_tray.core.config import load_config
    from bastion_tray.service.clientside import connect
    from bastion_tray.ui.watch import StatusWatcher

    app, runner, _, _ = tray_env
    config = load_config(app.config)
    seen: list[tuple[bool, IconState]] = []
    events: list[dict[str, Any]] = []
    watcher = StatusWatcher(lambda: connect(config, app_paths()),
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
        # the new daemon finds the bastion running, and no link of its own yet: not green
        wait_until(lambda: seen[-1] == (True, IconState.LINK_DOWN), 20, "the link-down icon")
        assert (True, IconState.READY) not in seen[seen.index((False, IconState.OFFLINE)):]
