"""Small pieces the runtime waits with: a waiter handle, how slow work is spawned, timings."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from bastion_tray.core import lifecycle as lc
from bastion_tray.core.config import Settings
from bastion_tray.core.errors import BastionTrayError

Spawn = Callable[[Callable[[], None], str], None]


def spawn_thread(work: Callable[[], None], name: str) -> None:
    threading.Thread(target=work, name=name, daemon=True).start()


def timings_for(settings: Settings) -> lc.Timings:
    return lc.Timings(ready_timeout=settings.ready_timeout)


@dataclass
class Waiter:
    """A request waiting for the lifecycle: set once, with a host or an error."""

    id: int
    done: threading.Event = field(default_factory=threading.Event)
    host: str | None = None
    state: str | None = None
    error: BastionTrayError | None = None
