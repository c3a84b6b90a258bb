"""Small pieces the runtime waits with: a waiter handle, how slow work is spawned, timings."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from bastion_tray.core import lifecycle as lc
from bastion_tray.core.config import Profile, Settings
from bastion_tray.core.errors import BastionTrayError
from bastion_tray.core.idle import IdlePolicy

Spawn = Callable[[Callable[[], None], str], None]


def spawn_thread(work: Callable[[], None], name: str) -> None:
    threading.Thread(target=work, name=name, daemon=True).start()


#: while others use the bastion, look again at half the idle timeout, within these bounds
RECHECK_MIN, RECHECK_MAX = 2.0, 30.0


def timings_for(settings: Settings, profile: Profile | None = None) -> lc.Timings:
    idle = profile.bastion.idle_timeout if profile else settings.idle_timeout
    return lc.Timings(ready_timeout=settings.ready_timeout,
                      recheck=min(RECHECK_MAX, max(RECHECK_MIN, idle / 2)))


def backstop_off(profile: Profile) -> str | None:
    """Why the profile has no backstop, or None when it has one."""
    b, where = profile.bastion, f"[profiles.{profile.name}.bastion]"
    if not b.auto_stop:
        return f"auto_stop is off in {where}"
    if b.backstop is None:
        return f'backstop = "off" in {where}'
    if b.backstop_role is None:
        return (f"no backstop_role in {where}: run `bastion-tray init` to create one, or see "
                "the README's IAM section")
    return None


def setup_for(profile: Profile, settings: Settings, timings: lc.Timings | None,
              endpoint: str) -> lc.Setup:
    b = profile.bastion
    off = backstop_off(profile)
    return lc.Setup(profile=profile.name, port=b.port,
                    fixed_host=None if b.host == "auto" else b.host,
                    policy=IdlePolicy(b.idle_timeout, profile.warn_before, b.auto_stop),
                    timings=timings or timings_for(settings, profile), endpoint=endpoint,
                    user_id=settings.user_id, lease_ttl=settings.lease_ttl,
                    backstop=b.backstop if off is None else None, backstop_off=off,
                    ingress=b.ingress == "my-ip",
                    jitter=random.random())


@dataclass
class Waiter:
    """A request waiting for the lifecycle: set once, with a host or an error."""

    id: int
    done: threading.Event = field(default_factory=threading.Event)
    host: str | None = None
    state: str | None = None
    error: BastionTrayError | None = None
