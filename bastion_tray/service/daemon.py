"""The daemon: one per user. Wires profiles, the event bus and the control socket together.

Requests arrive on the control socket (service/control.py) and are answered by `Handlers`,
each in its own thread; the ticker feeds every profile's lifecycle a tick four times a second.
Nothing here imports boto3 or paramiko: the adapters come in through `Adapters`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from bastion_tray import __version__
from bastion_tray.core.config import Config
from bastion_tray.core.errors import UsageError
from bastion_tray.core.paths import AppPaths
from bastion_tray.service.control import ControlServer
from bastion_tray.service.events import EventBus
from bastion_tray.service.links import Adapters
from bastion_tray.service.requests import Handlers
from bastion_tray.service.runtime import ProfileRuntime
from bastion_tray.service.statefile import StateFile

log = logging.getLogger("bastion_tray.daemon")

TICK = 0.25  # seconds between lifecycle ticks: the granularity of every timer


class Daemon:
    """A handle: `start()`, then `wait()` until a shutdown request or signal, `close()`."""

    def __init__(self, config: Config, paths: AppPaths, adapters: Adapters,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.config = config
        self.paths = paths
        self.adapters = adapters
        self.bus = EventBus()
        self.state = StateFile(paths.state_dir / "daemon-state.json")
        self.runtimes = {name: ProfileRuntime(profile, config.settings, adapters, self.bus,
                                              self.state, clock)
                         for name, profile in config.profiles.items()}
        self.handlers = Handlers(self.runtime, self.status, self.bus, self.request_shutdown)
        self.server = ControlServer(paths, self.handlers.handle)
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._closed = False
        self._config_stamp = self._stamp()

    def _stamp(self) -> tuple[float, int] | None:
        try:
            st = self.config.path.stat()
        except OSError:
            return None
        return st.st_mtime, st.st_size

    @property
    def config_changed(self) -> bool:
        """The file on disk differs from what this daemon loaded (it reads it only at start)."""
        return self._stamp() != self._config_stamp

    def runtime(self, name: object) -> ProfileRuntime:
        if not isinstance(name, str) or name not in self.runtimes:
            known = ", ".join(sorted(self.runtimes)) or "none"
            raise UsageError(f"unknown profile {name!r} (known profiles: {known})",
                             hint=f"profiles are defined in {self.config.path}")
        return self.runtimes[name]

    def status(self, wait_discovery: float = 0.0) -> dict[str, Any]:
        """Every profile's snapshot; waits up to `wait_discovery` s for start-up discovery."""
        deadline = time.monotonic() + wait_discovery
        for rt in self.runtimes.values():
            rt.discovered.wait(max(0.0, deadline - time.monotonic()))
        return {"profiles": {name: rt.snapshot() for name, rt in self.runtimes.items()},
                "daemon": {"pid": os.getpid(), "version": __version__,
                           "config": str(self.config.path),
                           "config_changed": self.config_changed}}

    def start(self) -> None:
        self.server.start()
        log.info("daemon %s started (pid %d), config %s, %d profile(s)", __version__,
                 os.getpid(), self.config.path, len(self.runtimes))
        for rt in self.runtimes.values():
            rt.restore_forwards()
            rt.refresh()  # start-up discovery: a running bastion resumes its idle clock
        threading.Thread(target=self._ticker, name="ticker", daemon=True).start()

    def _ticker(self) -> None:
        while not self._stop.is_set():
            self._sleep(TICK)
            if self._stop.is_set():
                return
            for rt in self.runtimes.values():
                rt.tick()  # never raises: the runtime logs a failing step once and goes on

    def request_shutdown(self) -> None:
        self._stop.set()

    def wait(self) -> None:
        while not self._stop.wait(1.0):
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        log.info("daemon shutting down")
        for rt in self.runtimes.values():
            rt.shutdown()
        self.server.close()
        self.adapters.close()
        log.info("daemon stopped")

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
