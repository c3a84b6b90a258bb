"""One profile's life in the daemon: instance, SSH link, forwards, sessions, idle clock.

Bring-up runs in its own thread ("attempt"), so a caller that stops waiting (a lazy forward
connection past `lazy_wait`, a client that hung up) does not abort it for everyone else. Every
change is published on the bus; `snapshot()` is what `status --json` shows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from bastion_tray.core.bringup import ensure_running
from bastion_tray.core.config import Profile, Settings
from bastion_tray.core.durations import format_duration
from bastion_tray.core.errors import BastionTrayError, CloudError, WaitTimeout
from bastion_tray.core.idle import IdleClock, IdlePolicy, Verdict
from bastion_tray.core.ports import InstanceInfo
from bastion_tray.service.events import EventBus
from bastion_tray.service.links import Adapters, BastionLink, Listener
from bastion_tray.service.statefile import StateFile

log = logging.getLogger("bastion_tray.daemon")


class Attempt:
    """One bring-up in flight; waiters block on `done` and share its outcome."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BastionTrayError | None = None
        self.started_at = time.monotonic()


class ProfileRuntime:
    def __init__(self, profile: Profile, settings: Settings, adapters: Adapters,
                 bus: EventBus, state: StateFile, clock: Callable[[], float] = time.time) -> None:
        self.profile = profile
        self.settings = settings
        self.adapters = adapters
        self.bus = bus
        self.state = state
        self.clock = clock
        self.cloud = adapters.cloud(profile)
        self.policy = IdlePolicy(profile.bastion.idle_timeout, profile.warn_before,
                                 profile.bastion.auto_stop)
        self.ctx = f"[profile={profile.name}]"
        self._lock = threading.RLock()
        self.info: InstanceInfo | None = None
        self.link: BastionLink | None = None
        self.ssh = "disconnected"
        self.phase: str | None = None  # what a bring-up is doing now
        self.error: BastionTrayError | None = None
        self.idle = IdleClock()
        self.sessions = 0
        self.forwards: dict[str, Listener] = {}
        self._attempt: Attempt | None = None
        self._stopping = False
        self.link_losses = 0  # how often the SSH link died under us
        self.last_loss: str | None = None
        self.discovered = threading.Event()  # the start-up describe has answered (or failed)

    # ---- reading ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.profile.name

    def activity(self) -> int:
        with self._lock:
            return self.sessions + sum(f.active_connections for f in self.forwards.values())

    def snapshot(self) -> dict[str, Any]:
        """This profile's entry of `status --json` (the contract, extended)."""
        from bastion_tray.service.snapshot import profile_snapshot

        with self._lock:
            return profile_snapshot(self, self.clock())

    @property
    def starting_for(self) -> float | None:
        attempt = self._attempt
        if attempt is None or attempt.done.is_set():
            return None
        return time.monotonic() - attempt.started_at

    def host(self) -> str | None:
        """The address to reach the bastion at: `host`, or its current IP with host = "auto"."""
        b = self.profile.bastion
        if b.host != "auto":
            return b.host
        return self.info.address if self.info else None

    def _publish(self, type_: str, **fields: Any) -> None:
        self.bus.publish({"type": type_, "profile": self.name, **fields})

    def set_error(self, error: BastionTrayError | None) -> None:
        """Show `error` in the status (None: the user fixed it, e.g. trusted the host key)."""
        with self._lock:
            self.error = error
        self.changed()

    def changed(self) -> None:
        """Something visible changed (a connection opened or closed): tell subscribers."""
        self._publish("changed")

    # ---- discovering -------------------------------------------------------------------------

    def refresh(self) -> InstanceInfo:
        """Ask EC2 for the instance's state; resumes the idle clock of a running bastion."""
        info = self.cloud.describe()
        with self._lock:
            before = self.info.state if self.info else None
            self.info = info
            if info.state == "running" and before != "running":
                saved = self.state.idle_since(info.instance_id)
                self.idle = IdleClock(idle_since=saved) if saved else IdleClock()
                self.idle = self.idle.observe(self.activity(), self.clock())
            if info.state != "running" and self.link is None:
                self.idle = self.idle.reset()
        if before != info.state:
            log.info("%s instance %s is %s", self.ctx, info.instance_id, info.state)
            self._publish("instance", state=info.state)
        return info

    # ---- bringing up -----------------------------------------------------------------------

    def ensure_ready(self, timeout: float | None = None) -> BastionLink:
        """The connected link, bringing the bastion up if needed; waits at most `timeout`."""
        with self._lock:
            if self.link is not None and self.link.alive:
                return self.link
            attempt = self._attempt
            if attempt is None or attempt.done.is_set():
                attempt = self._attempt = Attempt()
                threading.Thread(target=self._bring_up, args=(attempt,),
                                 name=f"bringup-{self.name}", daemon=True).start()
        limit = timeout if timeout is not None else self.settings.ready_timeout + 120
        if not attempt.done.wait(limit):
            raise WaitTimeout(f"the bastion of profile {self.name} was not ready within "
                              f"{format_duration(limit)} (now: {self.phase or 'starting'})",
                              hint="it keeps starting in the background; "
                                   f"see `bastion-tray status` for {self.name}")
        if attempt.error is not None:
            raise attempt.error
        with self._lock:
            if self.link is None:
                raise CloudError(f"the bastion of profile {self.name} went away right after "
                                 "it came up", hint="try again")
            return self.link

    def _report(self, phase: str, detail: str) -> None:
        with self._lock:
            self.phase = phase
        self._publish("progress", phase=phase, detail=detail)

    def _bring_up(self, attempt: Attempt) -> None:
        began = time.monotonic()
        try:
            with self._lock:
                self.error = None
                self.ssh = "disconnected"
            host, port = self.ensure_ssh_answers(began)
            with self._lock:
                self.ssh = "connecting"
            self._report("connecting", f"{self.profile.bastion.user}@{host}:{port}")
            link = self.adapters.connect(host, port, self.profile.bastion, self.name,
                                         self.settings, self._on_lost)
            took = time.monotonic() - began
            with self._lock:
                self.link = link
                self.ssh = "connected"
                self.phase = None
                self.idle = self.idle.observe(self.activity(), self.clock())
            log.info("%s ready in %.1f s (%s:%s)", self.ctx, took, host, port)
            self._publish("ready", seconds=round(took, 1), host=f"{host}:{port}")
        except BastionTrayError as exc:
            with self._lock:
                self.error, self.phase, self.ssh = exc, None, "disconnected"
            attempt.error = exc
            log.warning("%s bring-up failed: %s", self.ctx, exc.message)
            self._publish("error", kind=exc.kind, message=exc.message, hint=exc.hint)
        except Exception as exc:  # a bug: report it as a daemon error instead of hanging
            log.exception("%s bring-up crashed", self.ctx)
            err = BastionTrayError(f"internal error while starting {self.name}: {exc!r}")
            with self._lock:
                self.error, self.phase, self.ssh = err, None, "disconnected"
            attempt.error = err
        finally:
            attempt.done.set()

    def ensure_ssh_answers(self, began: float | None = None) -> tuple[str, int]:
        """Instance running (started if needed) and its SSH port answering: (host, port)."""
        began = time.monotonic() if began is None else began
        info, started = ensure_running(self.cloud, timeout=self.settings.ready_timeout,
                                       clock=time.monotonic, sleep=time.sleep,
                                       progress=self._report)
        if started:
            self.state.mark_started(info.instance_id)
        self.refresh()
        host, port = self.host() or "", self.profile.bastion.port
        self._report("waiting for SSH", f"{host}:{port}")
        left = max(1.0, self.settings.ready_timeout - (time.monotonic() - began))
        self.adapters.wait_ssh(host, port, timeout=left, progress=self._report)
        return host, port

    # ---- using -------------------------------------------------------------------------------

    def open_channel(self, host: str, port: int, origin: tuple[str, int],
                     timeout: float | None = None) -> Any:
        """A channel to host:port through the bastion; one retry on a link that just died."""
        for attempt in (1, 2):
            link = self.ensure_ready(timeout)
            try:
                return link.open_channel(host, port, origin)
            except BastionTrayError:
                if attempt == 2 or link.alive:
                    raise
                log.info("%s link died while opening a channel; reconnecting", self.ctx)
        raise AssertionError("unreachable")

    def open_forward(self, name: str) -> Listener:
        """Start listening on one forward (idempotent)."""
        cfg = self.profile.forwards[name]
        with self._lock:
            existing = self.forwards.get(name)
            if existing is not None and existing.listening:
                return existing

            def connector(origin: tuple[str, int]) -> Any:
                return self.open_channel(cfg.remote_host, cfg.remote_port, origin,
                                         timeout=self.settings.lazy_wait)

            listener = self.adapters.forward(cfg, connector, self.name, self._on_activity)
            listener.start()
            self.forwards[name] = listener
        log.info("%s forward %s listening on %s:%s", self.ctx, name, cfg.bind,
                 listener.local_port)
        self._publish("forward", forward=name, listening=True)
        return listener

    def session_opened(self) -> None:
        with self._lock:
            self.sessions += 1
        self._on_activity()

    def session_closed(self) -> None:
        with self._lock:
            self.sessions -= 1
        self._on_activity()

    def _on_activity(self) -> None:
        with self._lock:
            self.idle = self.idle.observe(self.activity(), self.clock())
            since = self.idle.idle_since
            instance = self.info.instance_id if self.info else None
        if instance:
            self.state.set_idle_since(instance, since)
        self.changed()

    def keep_running(self, seconds: float) -> None:
        with self._lock:
            self.idle = self.idle.postpone(self.clock(), seconds)
        log.info("%s keep running: no idle stop for %s", self.ctx, format_duration(seconds))
        self.changed()

    # ---- losing and stopping -------------------------------------------------------------

    def _on_lost(self, reason: str) -> None:
        with self._lock:
            self.link = None
            self.ssh = "disconnected"
            self.link_losses += 1
            self.last_loss = reason
        log.warning("%s SSH link lost: %s", self.ctx, reason)
        self._publish("disconnected", reason=reason)
        threading.Thread(target=self._after_loss, name=f"reconnect-{self.name}",
                         daemon=True).start()

    def _after_loss(self) -> None:
        """Reconnect with backoff while the instance runs and forwards need it."""
        delay = 1.0
        while not self._stopping:
            try:
                info = self.refresh()
            except BastionTrayError as exc:
                log.warning("%s cannot check the instance: %s", self.ctx, exc.message)
                info = None
            if info is not None and info.state != "running":
                log.warning("%s instance %s is %s (stopped outside bastion-tray?); it starts "
                            "again on the next demand", self.ctx, info.instance_id, info.state)
                return
            with self._lock:
                needed = any(f.listening for f in self.forwards.values()) or self.sessions > 0
                if self.link is not None or not needed:
                    return
            try:
                self.ensure_ready()
                log.info("%s reconnected", self.ctx)
                return
            except BastionTrayError as exc:
                log.info("%s reconnect failed (%s); next try in %.0f s", self.ctx,
                         exc.message, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)

    def tick(self) -> None:
        """Called about twice a second: idle warnings and the auto-stop."""
        now = self.clock()
        with self._lock:
            running = self.info is not None and self.info.state == "running"
            if not running or self._stopping or self._attempt_in_flight():
                return
            activity = self.activity()
            self.idle = self.idle.observe(activity, now)
            decision = self.idle.decide(self.policy, activity, now)
            if decision.verdict is Verdict.WARN:
                self.idle = self.idle.warned_now()
        if decision.verdict is Verdict.WARN:
            log.info("%s %s", self.ctx, decision.reason)
            self._publish("warn", stops_in=round(decision.stops_in or 0), reason=decision.reason)
        elif decision.verdict is Verdict.STOP:
            self.stop(decision.reason, only_if_idle=True)

    def _attempt_in_flight(self) -> bool:
        return self._attempt is not None and not self._attempt.done.is_set()

    def stop(self, reason: str, *, close_listeners: bool = False,
             only_if_idle: bool = False) -> InstanceInfo | None:
        """Close connections and the link, then stop the instance (never a foreign one).

        `only_if_idle`: the idle stop re-checks under the lock, so a connection that arrived
        since the decision keeps the bastion instead of being cut.
        """
        with self._lock:
            if self._stopping or (only_if_idle and self.activity() > 0):
                return self.info
            self._stopping = True
            link, self.link = self.link, None
            self.ssh = "disconnected"
            listeners = list(self.forwards.values())
        try:
            log.info("%s stopping: %s", self.ctx, reason)
            for listener in listeners:
                listener.close_connections()
                if close_listeners:
                    listener.close()
            if close_listeners:
                with self._lock:
                    self.forwards.clear()
            if link is not None:
                link.close()
            info = self.refresh()
            if info.state in ("pending", "running"):
                self.cloud.stop()
            self.state.forget(info.instance_id)
            info = self.refresh()
            with self._lock:
                self.idle = self.idle.reset()
            self._publish("stopped", reason=reason, state=info.state)
            return info
        finally:
            with self._lock:
                self._stopping = False

    def shutdown(self) -> None:
        """Daemon exit: stop what this daemon started when auto_stop is on, then close all."""
        with self._lock:
            instance = self.info.instance_id if self.info else None
        if instance and self.policy.auto_stop and self.state.started(instance):
            try:
                self.stop("the daemon is exiting and started this bastion", close_listeners=True)
            except BastionTrayError as exc:
                log.warning("%s could not stop the bastion on exit: %s", self.ctx, exc)
        for listener in list(self.forwards.values()):
            listener.close()
        if self.link is not None:
            self.link.close()
