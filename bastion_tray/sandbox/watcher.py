"""Keeps the bastion's sshd in step with its EC2 state, like a real machine booting and halting.

moto flips an instance to `running` at once; a real bastion answers SSH only after it booted.
So sshd starts `boot_delay` seconds after the instance was first seen running, and is killed (with
every session) as soon as the instance is seen in any other state. The same goes for the
stand-in bastion (standins.py) where OpenSSH is missing: anything `Switchable` will do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class Switchable(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def is_running(self) -> bool: ...


class BastionWatcher:
    """A polling thread; `close()` stops it (the sshd is left to its owner)."""

    def __init__(self, state_of: Callable[[], str], sshd: Switchable, *, boot_delay: float,
                 poll_interval: float = 0.15, clock: Callable[[], float] = time.monotonic) -> None:
        self._state_of = state_of
        self._sshd = sshd
        self._boot_delay = boot_delay
        self._poll_interval = poll_interval
        self._clock = clock
        self._running_since: float | None = None
        self._last_state = "unknown"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandbox-bastion-watcher",
                                        daemon=True)

    @property
    def last_state(self) -> str:
        return self._last_state

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self._thread.start()

    def step(self) -> None:
        """One poll: look at the instance, then start or stop sshd to match."""
        state = self._state_of()
        now = self._clock()
        if state != self._last_state:
            log.info("[sandbox bastion] instance %s → %s", self._last_state, state)
            self._last_state = state
        if state != "running":
            self._running_since = None
            if self._sshd.is_running():
                self._sshd.stop()
            return
        if self._running_since is None:
            self._running_since = now
        # also restarts an sshd that died while the instance is up, as systemd would
        if now - self._running_since >= self._boot_delay and not self._sshd.is_running():
            self._sshd.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # moto busy or going away: the next poll decides
                log.debug("[sandbox bastion] poll failed: %s", exc)
            self._stop.wait(self._poll_interval)

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
