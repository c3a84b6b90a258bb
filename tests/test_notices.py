"""Notices, purely: which events deserve one and their words and icons; the Outbox that shows
every notice in order, drops only exact repeats and merges where a sink shows one at a time.

Pins issue 8 item 7: the action's "db connected" came 1 ms before the daemon's "bastion ready"
and the desktop showed only one of them.
"""

from __future__ import annotations

import threading
import time

import pytest

from bastion_tray.ui.model import IconState
from bastion_tray.ui.notices import Coalescer, Deduper, Notice, Outbox, merge, notice_for_event

READY = Notice("foo: bastion ready", "ready in 1.8 s (127.0.0.9:2222)", IconState.READY)
DB = Notice("foo: db connected", "db is ready at 127.0.0.1:13306", IconState.CONNECTED)


class FakeSink:
    """Records what it shows; `works=False` refuses (as a missing notification server)."""

    def __init__(self, replaces: bool, works: bool = True, delay: float = 0.0) -> None:
        self.replaces, self.works, self.delay = replaces, works, delay
        self.shown: list[Notice] = []

    def show(self, notice: Notice) -> bool:
        time.sleep(self.delay)
        if self.works:
            self.shown.append(notice)
        return self.works


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ---- the words and icons -------------------------------------------------------------------

def test_notices_for_the_events_that_deserve_one() -> None:
    ready = notice_for_event({"type": "ready", "profile": "foo", "seconds": 12.34,
                              "host": "127.0.0.9:2222"})
    assert ready == Notice("foo: bastion ready", "ready in 12.3 s (127.0.0.9:2222)",
                           IconState.READY)
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
    lost = notice_for_event({"type": "disconnected", "profile": "foo", "reason": "EOF"})
    assert lost is not None
    for quiet in ("heartbeat", "changed", "progress", "forward", "instance"):
        assert notice_for_event({"type": quiet, "profile": "foo"}) is None
    icons = [n.icon for n in (ready, warn, stopped, sso, lost) if n is not None]
    assert len(set(icons)) == 5, icons  # each kind of news looks different


@pytest.mark.parametrize(("event", "icon"), [
    ({"type": "ready", "seconds": 1.5}, IconState.READY),
    ({"type": "warn", "stops_in": 110}, IconState.STARTING),  # amber: look here
    ({"type": "stopped", "state": "stopped", "reason": "idle"}, IconState.STOPPED),
    ({"type": "error", "message": "boom"}, IconState.ERROR),
    ({"type": "disconnected", "reason": "EOF"}, IconState.LINK_DOWN),
    ({"type": "in_use", "in_use_by": ["bob@laptop-b"]}, IconState.LINK_DOWN),
])
def test_each_notice_carries_the_state_of_the_event_it_announces(
        event: dict[str, object], icon: IconState) -> None:
    """Issue 10: never the tray's current icon, never the daemon's OFFLINE for a lost link
    (the daemon answers), never green (READY/CONNECTED: SSH connected) for news of a link the
    daemon no longer holds."""
    notice = notice_for_event({**event, "profile": "foo"})
    assert notice is not None and notice.icon is icon


# ---- exact repeats only ------------------------------------------------------------------

def test_only_an_exact_repeat_is_dropped() -> None:
    clock = Clock()
    dedupe = Deduper(window=10, clock=clock)
    failed = Notice("foo: connect failed", "boom\n→ fix it", IconState.ERROR)
    assert dedupe.fresh(failed)
    # the daemon's error event for the same failure: the same words, read once
    assert not dedupe.fresh(Notice("foo: error", "boom\n→ fix it", IconState.ERROR))
    assert dedupe.fresh(Notice("foo: error", "boom"))  # not the same text: shown
    assert dedupe.fresh(Notice("bar: error", "boom\n→ fix it"))  # another profile: shown
    assert dedupe.fresh(READY) and dedupe.fresh(DB)
    clock.now = 11.0
    assert dedupe.fresh(failed)  # a while later, the same news is news again


# ---- merging, where a sink shows one at a time ---------------------------------------------

def test_merged_notices_keep_both_texts_and_the_urgent_icon() -> None:
    both = merge(READY, DB)
    assert both == Notice("foo: bastion ready · db connected",
                          "ready in 1.8 s (127.0.0.9:2222)\ndb is ready at 127.0.0.1:13306",
                          IconState.CONNECTED)
    failed = Notice("bar: connect failed", "boom", IconState.ERROR)
    assert merge(failed, DB).icon is IconState.ERROR
    assert merge(failed, DB).title == "bar: connect failed · foo: db connected"


def test_the_coalescer_merges_into_what_is_still_showing() -> None:
    clock = Clock()
    coalesce = Coalescer(window=5, clock=clock)
    assert coalesce.merged(READY) == READY
    coalesce.record(READY)
    clock.now = 0.3
    assert coalesce.merged(DB) == merge(READY, DB)
    clock.now = 60.0
    assert coalesce.merged(DB) == DB


def test_notices_1_ms_apart_are_both_shown_as_notifications_of_their_own() -> None:
    """Issue 8 item 7, the desktop side: two notifications, in order, each with its icon."""
    clock = Clock()
    desktop = FakeSink(replaces=False)
    outbox = Outbox([desktop, FakeSink(replaces=True)], clock=clock)
    assert outbox.post(DB) == DB
    clock.now = 0.001
    assert outbox.post(READY) == READY
    assert desktop.shown == [DB, READY]
    assert [n.icon for n in desktop.shown] == [IconState.CONNECTED, IconState.READY]


def test_a_sink_that_replaces_gets_them_merged_so_the_last_says_both() -> None:
    clock = Clock()
    balloon = FakeSink(replaces=True)
    outbox = Outbox([balloon], clock=clock)
    outbox.post(DB)
    clock.now = 0.001
    outbox.post(READY)
    assert balloon.shown == [DB, merge(DB, READY)]
    assert "db is ready" in balloon.shown[-1].message and "ready in" in balloon.shown[-1].message
    clock.now = 30.0
    outbox.post(Notice("foo: idle", "foo stops in 2 min"))
    assert balloon.shown[-1] == Notice("foo: idle", "foo stops in 2 min")


def test_when_notifications_fail_the_menu_line_carries_them_merged() -> None:
    clock = Clock()
    broken, menu = FakeSink(replaces=False, works=False), FakeSink(replaces=True)
    outbox = Outbox([broken, menu], clock=clock)
    outbox.post(DB)
    outbox.post(READY)
    assert broken.shown == [] and menu.shown[-1] == merge(DB, READY)


def test_a_repeat_is_not_shown_again_and_nothing_else_is_dropped() -> None:
    clock = Clock()
    sink = FakeSink(replaces=False)
    outbox = Outbox([sink], clock=clock)
    notices = [Notice(f"foo: n{i}", f"text {i}") for i in range(20)]
    for notice in notices:
        assert outbox.post(notice) == notice
    assert outbox.post(Notice("foo: again", "text 3")) is None
    assert sink.shown == notices


@pytest.mark.parametrize("replaces", [False, True])
def test_notices_from_many_threads_are_shown_one_at_a_time_none_lost(replaces: bool) -> None:
    """The action threads and the daemon's event stream post at once; a sink sees one call
    at a time and every notice reaches it (merged, where it replaces)."""
    sink = FakeSink(replaces=replaces, delay=0.001)
    outbox = Outbox([sink])
    inside, overlaps = threading.Semaphore(1), []
    show = sink.show

    def exclusive(notice: Notice) -> bool:
        if not inside.acquire(blocking=False):
            overlaps.append(notice)
            return show(notice)
        try:
            return show(notice)
        finally:
            inside.release()

    sink.show = exclusive  # type: ignore[method-assign]
    posted = [Notice(f"p{t}: n{i}", f"thread {t} notice {i}") for t in range(4) for i in range(10)]
    threads = [threading.Thread(target=lambda t=t: [outbox.post(n) for n in posted
                                                    if n.title.startswith(f"p{t}:")])
               for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert overlaps == []
    text = "\n".join(n.message for n in sink.shown)
    assert all(n.message in text for n in posted)
    if not replaces:
        assert sorted(sink.shown, key=str) == sorted(posted, key=str)


def test_the_tray_without_notifications_keeps_both_in_its_menu_line(
        monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """The whole TrayApp on pystray's dummy backend (no display, no notifications): two
    notices together end up in the one menu line, neither hidden by the other."""
    from pathlib import Path

    from bastion_tray.core.paths import app_paths
    from bastion_tray.ui.backend import Backend
    from bastion_tray.ui.model import find
    from bastion_tray.ui.tray import TrayApp

    monkeypatch.setenv("PYSTRAY_BACKEND", "dummy")
    import types

    import pystray

    class Icon:  # takes what the tray sets; has a menu, cannot notify
        HAS_MENU, HAS_NOTIFICATION = True, False

        def __init__(self, name: str, icon: object, title: str) -> None:
            self.icon, self.title, self.menu = icon, title, None

    fake = types.SimpleNamespace(Icon=Icon, Menu=pystray.Menu, MenuItem=pystray.MenuItem)
    home = Path(str(tmp_path))
    app = TrayApp(home / "config.toml", app_paths({"BASTION_TRAY_HOME": str(home)}),
                  Backend("dummy", fake), connect=lambda: None)  # type: ignore[arg-type,return-value]
    app.notify(DB)
    app.notify(READY)
    line = find(app._menu, "foo: db connected")
    assert line.label.startswith("foo: db connected · bastion ready: db is ready at")
    assert not line.enabled
    assert "bastion ready" in app._title and "db connected" in app._title


def test_a_teammate_keeping_the_bastion_up_is_one_notice_that_names_them() -> None:
    notice = notice_for_event({"type": "in_use", "profile": "foo",
                               "in_use_by": ["bob@laptop-b"], "other_sessions": 1})
    assert notice is not None
    assert notice.title == "foo: in use by bob@laptop-b (1 SSH connection)"
    assert "you are idle" in notice.message and notice.icon is IconState.LINK_DOWN
    plain = notice_for_event({"type": "in_use", "profile": "foo", "in_use_by": [],
                              "other_sessions": 2})
    assert plain is not None and plain.title == "foo: in use by 2 other SSH sessions"
