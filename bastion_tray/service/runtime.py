"""One profile in the daemon: runs its lifecycle (core/lifecycle.py) and holds its handles.

The runtime decides nothing. Every request, adapter answer and tick becomes an event; the pure
`step` turns it into the next state and a list of effects, which the runtime carries out in
order. Events are processed one at a time (whichever thread posts while nobody drains, drains);
slow effects — EC2 calls, waiting for SSH, connecting — run through `spawn` (a thread each in
the daemon, inline in tests) and come back as events. The clock is passed in.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from bastion_tray.core import lifecycle as lc
from bastion_tray.core.config import Profile, Settings
from bastion_tray.core.durations import format_duration
from bastion_tray.core.errors import (
    BastionTrayError,
    CloudError,
    DaemonError,
    WaitTimeout,
)
from bastion_tray.service.events import EventBus
from bastion_tray.service.links import Adapters, BastionLink, Listener
from bastion_tray.service.snapshot import profile_snapshot
from bastion_tray.service.statefile import StateFile
from bastion_tray.service.streams import Streams
from bastion_tray.service.waiting import Spawn, Waiter, setup_for, spawn_thread

log = logging.getLogger("bastion_tray.daemon")

class ProfileRuntime(Streams):
    def __init__(self, profile: Profile, settings: Settings, adapters: Adapters,
                 bus: EventBus, statefile: StateFile, clock: Callable[[], float] = time.time,
                 spawn: Spawn = spawn_thread, timings: lc.Timings | None = None) -> None:
        self.profile, self.settings, self.adapters = profile, settings, adapters
        self.bus, self.statefile, self.clock, self._spawn = bus, statefile, clock, spawn
        self.cloud = adapters.cloud(profile)
        self.backstop = adapters.backstop(profile)
        self.ingress = adapters.ingress(profile, settings)
        setup = setup_for(profile, settings, timings, self.cloud.endpoint)
        self.state = lc.initial(setup, statefile.record(profile.name))
        self.ctx = f"[profile={profile.name}]"
        self.forwards: dict[str, Listener] = {}
        self.sessions = 0
        self._link: BastionLink | None = None
        self._link_attempt = 0
        self._new_links: dict[int, BastionLink] = {}
        self._waiters: dict[int, Waiter] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # the handles above
        self._queue: collections.deque[lc.Event] = collections.deque()
        self._draining = False
        self._failures: dict[str, int] = {}  # an error logged once, then counted
        self.discovered = threading.Event()  # the start-up describe has answered (or failed)

    @property
    def name(self) -> str:
        return self.profile.name

    # ---- the event loop -----------------------------------------------------------------

    def post(self, event: lc.Event) -> None:
        """Feed one event; returns once it (and all it led to) is processed, unless another
        thread is draining the queue, which then processes it."""
        with self._lock:
            self._queue.append(event)
            if self._draining:
                return
            self._draining = True
        while True:
            with self._lock:
                if not self._queue:
                    self._draining = False
                    return
                event = self._queue.popleft()
            self._process(event)

    def _process(self, event: lc.Event) -> None:
        try:
            self.state, effects = lc.step(self.state, event, self.clock())
        except Exception as exc:  # a bug in the core: log once, keep the previous state
            self._failed(f"step {type(event).__name__}", exc)
            return
        for effect in effects:
            try:
                self._execute(effect)
            except Exception as exc:
                self._failed(f"effect {type(effect).__name__}", exc)

    def _failed(self, what: str, exc: Exception) -> None:
        key = f"{what}: {exc!r}"
        seen = self._failures.get(key, 0)
        self._failures[key] = seen + 1
        if seen == 0:
            log.exception("%s %s failed (logged once; the next tick runs)", self.ctx, what)

    def tick(self) -> None:
        """Feed the clock. Never raises: whatever fails is logged once and the next tick runs."""
        try:
            activity = self.live_activity()
        except Exception as exc:  # a broken counter: skip the tick rather than guess zero
            self._failed("counting connections", exc)
            return
        self.post(lc.Tick(activity))

    # ---- effects ------------------------------------------------------------------------

    def _execute(self, effect: lc.Effect) -> None:
        match effect:
            case lc.Publish(type=kind, fields=fields):
                self.bus.publish({"type": kind, "profile": self.name, **fields})
            case lc.Log(level=level, message=message):
                getattr(log, level)("%s %s", self.ctx, message)
            case lc.Save(record=record):
                self.statefile.save(self.name, record)
            case lc.Resolve(waiters=ids, host=host, error=error):
                self._resolve(ids, host=host, error=error)
            case lc.StopFinished(waiters=ids, state=state, error=error):
                self._resolve(ids, state=state, error=error)
            case lc.CallCloud():
                self._spawn(functools.partial(self._cloud_call, effect.call, effect.op),
                            f"ec2-{effect.op}-{self.name}")
            case lc.WaitSsh():
                self._spawn(functools.partial(self._wait_ssh, effect.attempt, effect.host,
                                              effect.port, effect.timeout),
                            f"wait-ssh-{self.name}")
            case lc.OpenLink():
                self._spawn(functools.partial(self._open_link, effect.attempt, effect.host,
                                              effect.port), f"connect-{self.name}")
            case lc.KeepLink(attempt=attempt):
                with self._lock:
                    self._link, self._link_attempt = self._new_links.pop(attempt), attempt
            case lc.DropLink(attempt=attempt):
                with self._lock:
                    late = self._new_links.pop(attempt, None)
                if late is not None:
                    late.close()
            case lc.CloseLink():
                with self._lock:
                    link, self._link = self._link, None
                if link is not None:
                    link.close()
            case lc.CloseConnections(listeners=close_listeners):
                self._close_connections(close_listeners)
            case lc.PutLease(call=call, until=until):
                self._spawn(functools.partial(self._lease_call, call, functools.partial(
                    self.cloud.put_lease, self.settings.user_id, until)), f"lease-{self.name}")
            case lc.DeleteLease(call=call):
                self._spawn(functools.partial(self._lease_call, call, functools.partial(
                    self.cloud.delete_lease, self.settings.user_id)), f"lease-{self.name}")
            case lc.PushBackstop(call=call, instance_id=instance_id, at=at):
                self._spawn(functools.partial(self._backstop_call, call, functools.partial(
                    self.backstop.push, instance_id, at)), f"backstop-{self.name}")
            case lc.DeleteBackstop(call=call, instance_id=instance_id):
                self._spawn(functools.partial(self._backstop_call, call, functools.partial(
                    self.backstop.delete, instance_id)), f"backstop-{self.name}")
            case lc.GrantIngress(call=call, until=until):
                self._spawn(functools.partial(self._ingress_call, call, until, self._instance_id()),
                            f"ingress-{self.name}")
            case lc.RevokeIngress(call=call):
                self._spawn(functools.partial(self._ingress_call, call, None, self._instance_id()),
                            f"ingress-{self.name}")
            case lc.CountSessions(check=check):
                self._spawn(functools.partial(self._count_sessions, check),
                            f"count-sessions-{self.name}")

    def _resolve(self, ids: tuple[int, ...], *, host: str | None = None,
                 state: str | None = None, error: BastionTrayError | None = None) -> None:
        with self._lock:
            waiters = [self._waiters.pop(i) for i in ids if i in self._waiters]
        for waiter in waiters:
            waiter.host, waiter.state, waiter.error = host, state, error
            waiter.done.set()

    def _close_connections(self, close_listeners: bool) -> None:
        with self._lock:
            listeners = list(self.forwards.values())
            if close_listeners:
                self.forwards.clear()
        for listener in listeners:
            listener.close_connections()
            if close_listeners:
                listener.close()

    def _guarded(self, what: str, work: Callable[[], lc.Event],
                 failed: Callable[[BastionTrayError], lc.Event]) -> None:
        """Run slow work and post what came of it: its event, or its failure as an event."""
        try:
            event = work()
        except BastionTrayError as exc:
            event = failed(exc)
        except Exception as exc:  # a bug in an adapter: a failure the user can read, no hang
            log.exception("%s %s crashed", self.ctx, what)
            event = failed(DaemonError(f"internal error in {what}: {exc!r}"))
        self.post(event)

    def _cloud_call(self, call: int, op: str) -> None:
        def work() -> lc.Event:
            if op == "describe":
                return lc.Seen(call, self.cloud.describe())
            (self.cloud.start if op == "start" else self.cloud.stop)()
            return lc.CallDone(call)

        try:
            self._guarded(f"EC2 {op}", work, lambda exc: lc.CallFailed(call, exc))
        finally:
            if op == "describe":
                self.discovered.set()

    def _wait_ssh(self, attempt: int, host: str, port: int, timeout: float) -> None:
        def work() -> lc.Event:
            self.adapters.wait_ssh(host, port, timeout=timeout, progress=self._progress)
            return lc.SshAnswered(attempt)

        self._guarded("waiting for SSH", work, lambda exc: lc.SshFailed(attempt, exc))

    def _open_link(self, attempt: int, host: str, port: int) -> None:
        def work() -> lc.Event:
            link = self.adapters.connect(host, port, self.profile.bastion, self.name,
                                         self.settings,
                                         lambda reason: self.post(lc.LinkLost(attempt, reason)))
            with self._lock:
                self._new_links[attempt] = link
            return lc.LinkUp(attempt)

        self._guarded("connecting", work, lambda exc: lc.LinkFailed(attempt, exc))

    def _lease_call(self, call: int, work: Callable[[], None]) -> None:
        def run() -> lc.Event:
            work()
            return lc.LeaseDone(call)

        self._guarded("the lease tag", run, lambda exc: lc.LeaseDone(call, exc))

    def _instance_id(self) -> str | None:
        return self.state.instance.instance_id if self.state.instance else None

    def _ingress_call(self, call: int, until: float | None, instance_id: str | None) -> None:
        def run() -> lc.Event:
            if until is None:
                self.ingress.release(instance_id)
                return lc.IngressDone(call)
            if instance_id is None:
                raise DaemonError("internal error: a my-ip grant before the instance is known")
            granted = self.ingress.grant(instance_id, until)
            return lc.IngressDone(call, granted.address, granted.covered_by)

        self._guarded("the SSH rule", run, lambda exc: lc.IngressDone(call, error=exc))

    def _backstop_call(self, call: int, work: Callable[[], float | None]) -> None:
        def run() -> lc.Event:
            return lc.BackstopDone(call, work())

        self._guarded("the backstop schedule", run, lambda exc: lc.BackstopDone(call, None, exc))

    def _count_sessions(self, check: int) -> None:
        """Over the link when it is up; else over a connection of our own, closed right after
        (a link kept open would be a session the teammates' daemons wait for)."""
        def run() -> lc.Event:
            with self._lock:
                link = self._link
            if link is not None and link.alive:
                return lc.SessionsCounted(check, self.adapters.count_sessions(link))
            host = self.state.host
            if not host:
                raise CloudError(f"the bastion of profile {self.name} has no address now")
            probe = self.adapters.connect(host, self.profile.bastion.port, self.profile.bastion,
                                          self.name, self.settings, lambda reason: None)
            try:
                return lc.SessionsCounted(check, self.adapters.count_sessions(probe))
            finally:
                probe.close()

        self._guarded("counting SSH sessions", run,
                      lambda exc: lc.SessionsCounted(check, None, exc))

    def _progress(self, phase: str, detail: str) -> None:
        """What an adapter reports during a long wait: shown, never decided on."""
        self.bus.publish({"type": "progress", "profile": self.name, "phase": phase,
                          "detail": detail})

    # ---- reading --------------------------------------------------------------------------

    def live_activity(self) -> int:
        with self._lock:
            return self.sessions + sum(f.active_connections for f in self.forwards.values())

    def snapshot(self) -> dict[str, Any]:
        """This profile's entry of `status --json` (the contract, extended)."""
        with self._lock:
            forwards = dict(self.forwards)
            sessions = self.sessions
            link = self._link
        snap = profile_snapshot(self.state, self.profile, forwards, sessions, self.clock())
        snap["bastion"]["data_plane"] = link.data_plane if link is not None and link.alive \
            else None
        return snap

    # ---- requests ------------------------------------------------------------------------

    def _waiter(self) -> Waiter:
        waiter = Waiter(next(self._ids))
        with self._lock:
            self._waiters[waiter.id] = waiter
        return waiter

    def _wait(self, waiter: Waiter, limit: float, what: str) -> Waiter:
        if not waiter.done.wait(limit):
            with self._lock:
                self._waiters.pop(waiter.id, None)
            self.post(lc.GiveUp(waiter.id))
            raise WaitTimeout(f"{what} of profile {self.name}: not done within "
                              f"{format_duration(limit)} (now: {self.state.label or 'waiting'})",
                              hint="it goes on in the background; see `bastion-tray status`")
        if waiter.error is not None:
            raise waiter.error
        return waiter

    def request(self, goal: lc.Goal = lc.Goal.LINK) -> Waiter:
        """Ask for the bastion up to `goal` without waiting: the waiter is set when it is."""
        waiter = self._waiter()
        self.post(lc.Demand(waiter.id, goal))
        return waiter

    def ensure(self, goal: lc.Goal = lc.Goal.LINK, timeout: float | None = None) -> str:
        """Bring the bastion up to `goal`, starting it if needed; the host it answers at."""
        waiter = self.request(goal)
        limit = timeout if timeout is not None else self.state.setup.timings.ready_timeout + 30
        return self._wait(waiter, limit, "the bastion's start").host or ""

    def ensure_link(self, timeout: float | None = None) -> BastionLink:
        self.ensure(lc.Goal.LINK, timeout)
        with self._lock:
            link = self._link
        if link is None:
            raise CloudError(f"the bastion of profile {self.name} went away right after it "
                             "came up", hint="try again")
        return link

    def remember_passphrase(self, secret: str) -> None:
        key = self.profile.bastion.identity_file
        if key is not None:
            self.adapters.remember_passphrase(str(key), secret)

    def session_opened(self) -> None:
        with self._lock:
            self.sessions += 1
        self._activity_changed()

    def session_closed(self) -> None:
        with self._lock:
            self.sessions = max(0, self.sessions - 1)
        self._activity_changed()

    def _activity_changed(self) -> None:
        self.post(lc.Activity(self.live_activity()))

    def keep_running(self, seconds: float) -> None:
        self.post(lc.Keep(seconds))

    def refresh(self) -> None:
        self.post(lc.Refresh())

    def stop(self, reason: str, *, close_listeners: bool = True, force: bool = False) -> str:
        """Close connections and the link, stop the instance; the state it ended in. Unless
        `force`, refused (InUseError) while others use the bastion."""
        waiter = self._waiter()
        self.post(lc.StopRequested(waiter.id, reason, close_listeners, force))
        return self._wait(waiter, self._stop_limit(), "stopping").state or "unknown"

    def _stop_limit(self) -> float:
        t = self.state.setup.timings  # a check (describe, count), the stop, the lease's delete
        return 4 * t.api_give_up + 5

    def shutdown(self) -> None:
        """Daemon exit: stop what this daemon started (auto_stop on), then close all."""
        waiter = self._waiter()
        self.post(lc.Exit(waiter.id))
        try:
            self._wait(waiter, self._stop_limit(), "the stop at exit")
        except BastionTrayError as exc:
            log.warning("%s could not stop the bastion on exit: %s", self.ctx, exc.message)
        self._close_connections(close_listeners=True)
        with self._lock:
            links = [self._link, *self._new_links.values()]
            self._link = None
            self._new_links.clear()
        for link in links:
            if link is not None:
                link.close()
