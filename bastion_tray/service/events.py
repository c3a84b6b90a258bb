"""A small publish/subscribe bus: the daemon publishes state events, subscribers get queues.

Subscribers are the tray (through `subscribe` on the control socket) and requests that wait
for a profile and relay its progress to their client. A slow subscriber never blocks the
daemon: its queue is bounded and it loses the oldest events first.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

Event = dict[str, Any]


class Subscription:
    """A handle: iterate with get(), close() when done."""

    def __init__(self, bus: EventBus, accept: Callable[[Event], bool], size: int) -> None:
        self._bus = bus
        self._accept = accept
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=size)

    def offer(self, event: Event) -> None:
        if not self._accept(event):
            return
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None after `timeout` seconds."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._bus.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []

    def subscribe(self, accept: Callable[[Event], bool] = lambda e: True,
                  size: int = 1000) -> Subscription:
        sub = Subscription(self, accept, size)
        with self._lock:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def publish(self, event: Event) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.offer(event)
