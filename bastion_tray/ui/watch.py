"""The tray's live view of the daemon: one `subscribe` stream, reopened when it breaks.

No polling: the daemon sends its full status first, then every event with a fresh status, and
a heartbeat every ~5 s. When the stream ends, errors or falls silent past `silence_limit`, the
watcher reports the daemon offline and reconnects with backoff; `connect` starts a daemon when
none runs (service/clientside.connect), so a crashed daemon comes back by itself. Every status
is read into core.status's typed `Status`; one the tray cannot read (a StatusFormatError, a
DaemonError) is a reason to reconnect, said in the log, never a crash of the UI.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bastion_tray.core.errors import BastionTrayError
from bastion_tray.core.status import Status

if TYPE_CHECKING:
    from bastion_tray.service.control_client import ControlClient, Subscription

log = logging.getLogger("bastion_tray.tray")

# (last known status or None, whether it is live, why not)
StatusCallback = Callable[[Status | None, bool, str | None], None]
EventCallback = Callable[[dict[str, Any]], None]


class StatusWatcher:
    """A handle: `start()`, then callbacks on a background thread until `close()`."""

    def __init__(self, connect: Callable[[], ControlClient], on_status: StatusCallback,
                 on_event: EventCallback, *, silence_limit: float = 15.0,
                 first_retry: float = 0.5, max_retry: float = 10.0) -> None:
        self._connect, self._on_status, self._on_event = connect, on_status, on_event
        self.silence_limit = silence_limit  # three missed heartbeats: the daemon is hung
        self.first_retry, self.max_retry = first_retry, max_retry
        self.status: Status | None = None  # the last status seen
        self.connected = False
        self.connects = 0  # how many streams were opened (the first plus reconnects)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sub: Subscription | None = None
        self._last_seen = time.monotonic()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in ((self._loop, "tray-watch"), (self._watchdog, "tray-watchdog")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            sub = self._sub
        if sub is not None:
            sub.close()  # wakes the blocked read
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def __enter__(self) -> StatusWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        delay = self.first_retry
        while not self._stop.is_set():
            try:
                reason = self._follow_one_stream()
                delay = self.first_retry
            except BastionTrayError as exc:
                reason = exc.message
            except Exception as exc:  # a bug: keep the tray alive, keep trying
                log.exception("watching the daemon failed")
                reason = f"internal error: {exc!r}"
            if self._stop.is_set():
                return
            log.info("daemon stream lost (%s); reconnecting in %.1f s", reason, delay)
            self.connected = False
            self._on_status(self.status, False, reason)
            self._stop.wait(delay)
            delay = min(delay * 2, self.max_retry)

    def _follow_one_stream(self) -> str:
        """Open a stream and deliver it until it ends; returns why it ended."""
        client = self._connect()
        with client:
            sub = client.subscribe()
            with self._lock:
                if self._stop.is_set():
                    sub.close()
                    return "closing"
                self._sub, self._last_seen = sub, time.monotonic()
            try:
                self.connects += 1
                self.status = Status.from_json(sub.snapshot)
                self.connected = True
                log.info("following the daemon (pid %s)", client.pid)
                self._on_status(self.status, True, None)
                for event in sub:
                    self._last_seen = time.monotonic()
                    if event.get("status") is not None:
                        self.status = Status.from_json(event["status"], "event.status")
                    if event.get("type") != "heartbeat":
                        self._on_event(event)
                    self._on_status(self.status, True, None)
            finally:
                with self._lock:
                    self._sub = None
                sub.close()
        return "the daemon closed the stream"

    def _watchdog(self) -> None:
        """Close a stream that fell silent: a hung daemon never ends it by itself."""
        while not self._stop.wait(1.0):
            with self._lock:
                sub = self._sub
                silent = time.monotonic() - self._last_seen
            if sub is not None and silent > self.silence_limit:
                log.warning("no word from the daemon for %.0f s; reconnecting", silent)
                sub.close()
