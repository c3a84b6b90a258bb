"""Fakes for the in-process service tests: adapters that keep their calls, a clock that moves
only when told, and a spawner that runs slow work inline or holds it (a hanging call)."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bastion_tray.core import lifecycle as lc
from bastion_tray.core.config import (
    BastionConfig,
    ForwardConfig,
    Profile,
    Settings,
)
from bastion_tray.core.errors import BastionTrayError, SSHError
from bastion_tray.core.ports import InstanceInfo, Progress
from bastion_tray.core.team import LEASE_PREFIX, iso_utc
from bastion_tray.service.events import EventBus
from bastion_tray.service.runtime import ProfileRuntime
from bastion_tray.service.statefile import StateFile

INSTANCE = "i-0123456789abcdef0"


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeCloud:
    """An EC2 instance: a start goes pending (running at the next describe), a stop goes
    stopping (stopped at the next describe). Each start may hand out a new public address."""

    endpoint = "http://127.0.0.1:9/fake-ec2"

    def __init__(self, state: str = "stopped", address: str = "127.0.0.10") -> None:
        self.state = state
        self.address = address
        self.next_addresses: list[str] = []
        self.calls: list[str] = []
        self.fail: dict[str, BastionTrayError] = {}
        self.tags: dict[str, str] = {}  # the instance's tags (leases)
        self.lease_calls: list[str] = []

    def _leases(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((k[len(LEASE_PREFIX):], v) for k, v in self.tags.items()
                            if k.startswith(LEASE_PREFIX)))

    def put_lease(self, user_id: str, until: float) -> None:
        self.lease_calls.append(f"put:{user_id}")
        if "put_lease" in self.fail:
            raise self.fail["put_lease"]
        self.tags[LEASE_PREFIX + user_id] = iso_utc(until)

    def delete_lease(self, user_id: str) -> None:
        self.lease_calls.append(f"delete:{user_id}")
        if "delete_lease" in self.fail:
            raise self.fail["delete_lease"]
        self.tags.pop(LEASE_PREFIX + user_id, None)

    def describe(self) -> InstanceInfo:
        if "describe" in self.fail:
            raise self.fail["describe"]
        state = self.state
        if state in ("pending", "stopping"):  # seen once in between, like EC2
            self.state = "running" if state == "pending" else "stopped"
        self.calls.append(f"describe:{state}")
        if state != "running":
            return InstanceInfo(INSTANCE, state, "foo-bastion", None, None, self._leases())
        return InstanceInfo(INSTANCE, self.state, "foo-bastion",
                            self.address if self.state == "running" else None, None,
                            self._leases())

    def start(self) -> None:
        self.calls.append("start")
        if "start" in self.fail:
            raise self.fail["start"]
        self.state = "pending"
        if self.next_addresses:
            self.address = self.next_addresses.pop(0)

    def stop(self) -> None:
        self.calls.append("stop")
        if "stop" in self.fail:
            raise self.fail["stop"]
        self.state = "stopping"


class SharedBastion:
    """The bastion's sshd as several daemons and plain ssh users see it: who is connected."""

    def __init__(self) -> None:
        self.links: list[FakeLink] = []
        self.plain = 0  # teammates with plain `ssh -N -L`

    def others(self, link: FakeLink) -> int:
        return self.plain + sum(1 for each in self.links if each.alive and each is not link)


class FakeBackstop:
    """EventBridge Scheduler: one schedule per instance, pushed to the later time."""

    def __init__(self) -> None:
        self.schedules: dict[str, float] = {}
        self.calls: list[str] = []
        self.fail: BastionTrayError | None = None

    def push(self, instance_id: str, at: float) -> float:
        self.calls.append("push")
        if self.fail is not None:
            raise self.fail
        self.schedules[instance_id] = max(self.schedules.get(instance_id, 0.0), at)
        return self.schedules[instance_id]

    def delete(self, instance_id: str) -> None:
        self.calls.append("delete")
        if self.fail is not None:
            raise self.fail
        self.schedules.pop(instance_id, None)


class FakeIngress:
    """The SSH group's my-ip rules: one address of ours at a time."""

    def __init__(self) -> None:
        self.address = "203.0.113.7/32"
        self.rules: dict[str, float] = {}  # address → until
        self.calls: list[str] = []
        self.fail: BastionTrayError | None = None
        self.gate: threading.Event | None = None  # set: a grant waits until it is set

    def grant(self, instance_id: str, until: float) -> SimpleNamespace:
        self.calls.append("grant")
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        self.rules = {self.address: until}
        return SimpleNamespace(address=self.address, covered_by=None)

    def release(self, instance_id: str | None) -> None:
        self.calls.append("release")
        if self.fail is not None:
            raise self.fail
        self.rules.clear()


class FakeChannel:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeLink:
    def __init__(self, host: str, on_lost: Callable[[str], None]) -> None:
        self.host = host
        self.on_lost = on_lost
        self.alive = True
        self.closed = False
        self.channels: list[FakeChannel] = []
        self.data_plane = "paramiko"

    def stream(self, host: str, port: int, sock: Any,
               origin: tuple[str, int] = ("127.0.0.1", 0)) -> FakeChannel:
        return self.open_channel(host, port, origin)

    def stdio(self, host: str, port: int, fd_in: int, fd_out: int) -> None:
        return None

    def stream_now(self, host: str, port: int, sock: Any) -> None:
        return None

    def open_channel(self, host: str, port: int,
                     origin: tuple[str, int] = ("127.0.0.1", 0)) -> FakeChannel:
        if not self.alive:
            raise SSHError("the link is closed")
        channel = FakeChannel(host, port)
        self.channels.append(channel)
        return channel

    def run(self, command: str, timeout: float) -> str:
        raise NotImplementedError("FakeAdapters.count_sessions answers instead")

    def lose(self, reason: str = "no reply to keepalives") -> None:
        self.alive = False
        self.on_lost(reason)

    def close(self) -> None:
        self.alive, self.closed = False, True


class FakeListener:
    def __init__(self, cfg: ForwardConfig, connector: Callable[[tuple[str, int]], Any],
                 on_change: Callable[[], None]) -> None:
        self.cfg, self.connector, self.on_change = cfg, connector, on_change
        self.local_port = cfg.local_port
        self.listening = False
        self.active_connections = 0
        self.total_connections = 0
        self.bytes_up = self.bytes_down = 0
        self.cut = 0  # times its connections were closed

    def start(self) -> None:
        self.listening = True

    def open(self, notify: bool = True) -> None:
        """A client connects (the forward counts it at accept, then tells the runtime)."""
        self.active_connections += 1
        self.total_connections += 1
        if notify:
            self.on_change()

    def hang_up(self) -> None:
        self.active_connections -= 1
        self.on_change()

    def close_connections(self) -> None:
        self.cut += self.active_connections
        self.active_connections = 0

    def close(self) -> None:
        self.listening = False


class FakeAdapters:
    def __init__(self, cloud: FakeCloud, shared: SharedBastion | None = None,
                 backstop: FakeBackstop | None = None) -> None:
        self.the_cloud = cloud
        self.shared = shared
        self.links: list[FakeLink] = []
        self.listeners: dict[str, FakeListener] = {}
        self.waited: list[str] = []
        self.connect_error: BastionTrayError | None = None
        self.ssh_error: BastionTrayError | None = None
        self.recorded: list[str] = []
        self.recorded_under: list[str] = []  # the aliases keys were recorded under
        self.fetched: list[tuple[str, int, Any]] = []  # fetch_host_key's (host, port, via)
        self.known_keys: dict[str, str] = {}  # alias → key line the stores vouch for
        self.host_key = ("SHA256:right", "ssh-ed25519 AAAA")
        self.the_backstop = backstop or FakeBackstop()
        self.the_ingress = FakeIngress()
        self.others_on_bastion: int | BastionTrayError = 0  # what a count answers
        self.counted_over: list[FakeLink] = []

    def cloud(self, profile: Profile) -> FakeCloud:
        return self.the_cloud

    def backstop(self, profile: Profile) -> FakeBackstop:
        return self.the_backstop

    def ingress(self, profile: Profile, settings: object) -> FakeIngress:
        return self.the_ingress

    def count_sessions(self, link: FakeLink) -> int:
        self.counted_over.append(link)
        if isinstance(self.others_on_bastion, BastionTrayError):
            raise self.others_on_bastion
        if self.shared is not None:
            return self.shared.others(link)
        return self.others_on_bastion

    def wait_ssh(self, host: str, port: int, *, timeout: float,
                 progress: Progress | None = None) -> float:
        self.waited.append(host)
        if self.ssh_error is not None:
            raise self.ssh_error
        return 0.0

    def connect(self, host: str, port: int, bastion: BastionConfig, profile: str,
                settings: Settings, on_lost: Callable[[str], None]) -> FakeLink:
        if self.connect_error is not None:
            raise self.connect_error
        link = FakeLink(host, on_lost)
        self.links.append(link)
        if self.shared is not None:
            self.shared.links.append(link)
        return link

    def forward(self, cfg: ForwardConfig, connector: Callable[[tuple[str, int]], Any],
                profile: str, on_change: Callable[[], None],
                fast: Callable[[tuple[str, int], Any], Any] | None = None) -> FakeListener:
        listener = FakeListener(cfg, connector, on_change)
        self.listeners[cfg.name] = listener
        return listener

    def pipe(self, sock: Any, leftover: bytes, channel: Any,
             on_closed: Callable[[], None]) -> Any:
        raise NotImplementedError("no pipes in the in-process tests")

    def dial(self, host: str, port: int) -> Any:
        return FakeChannel(host, port)

    def watch_stdio(self, stream: Any, client: Any, on_closed: Callable[[], None]) -> Any:
        raise NotImplementedError("no ssh masters in the in-process tests")

    def fetch_host_key(self, host: str, port: int, via: Any = None) -> tuple[str, str]:
        self.fetched.append((host, port, via))
        return self.host_key

    def host_key_status(self, target: Any, line: str,
                        pin: str | None) -> tuple[str, list[str], bool]:
        known = self.known_keys.get(target.alias)
        if known is None:
            return "unknown", [], False
        return ("trusted", [], True) if known == line else ("changed", ["SHA256:old"], False)

    def record_host_key(self, target: Any, line: str) -> str:
        self.recorded.append(line)
        self.recorded_under.append(target.alias)
        self.known_keys[target.alias] = line
        return "/fake/known_hosts"

    def console_verdict(self, profile: str, fingerprint: str,
                        instance_id: str | None = None) -> Any:
        from bastion_tray.core.console_keys import unavailable

        return unavailable("no console output in the in-process tests", instance_id)

    def remember_passphrase(self, path: str, secret: str | None) -> None:
        pass

    def close(self) -> None:
        pass


class Spawner:
    """Runs slow work at once, in the caller's thread — unless its name starts with a held
    prefix: then it waits in `held` until `release()` (an EC2 call that hangs)."""

    def __init__(self) -> None:
        self.hold: set[str] = set()
        self.held: list[tuple[str, Callable[[], None]]] = []

    def __call__(self, work: Callable[[], None], name: str) -> None:
        if any(name.startswith(prefix) for prefix in self.hold):
            self.held.append((name, work))
        else:
            work()

    def release(self, prefix: str = "") -> None:
        ready = [job for job in self.held if job[0].startswith(prefix)]
        self.held = [job for job in self.held if not job[0].startswith(prefix)]
        for _, work in ready:
            work()


ROLE = "arn:aws:iam::123456789012:role/bastion-tray-backstop"


def make_profile(*, idle_timeout: float = 600, warn_before: float = 120,
                 auto_stop: bool = True, host: str = "auto", backstop: float | None = 3600,
                 backstop_role: str | None = ROLE, ingress: str = "open") -> Profile:
    bastion = BastionConfig(instance_id=INSTANCE, name=None, user="ec2-user",
                            identity_file=None, host=host, idle_timeout=idle_timeout,
                            auto_stop=auto_stop, backstop=backstop, backstop_role=backstop_role,
                            ingress=ingress)
    db = ForwardConfig("db", 13306, "db.internal", 3306)
    return Profile("foo", "ap-northeast-1", None, bastion, forwards={"db": db},
                   warn_before=warn_before)


class Harness:
    """A ProfileRuntime with fakes everywhere; `restart()` builds a new one on the same
    state file, as a daemon restarted after a SIGKILL would."""

    def __init__(self, cloud: FakeCloud | None = None, state_dir: Path | None = None,
                 user_id: str = "me@laptop-a", lease_ttl: float = 600,
                 clock: FakeClock | None = None, shared: SharedBastion | None = None,
                 scheduler: FakeBackstop | None = None, **profile: Any) -> None:
        self.settings = Settings(user_id=user_id, lease_ttl=lease_ttl)
        self.cloud = cloud or FakeCloud()
        self.clock = clock or FakeClock()
        self.shared, self.scheduler = shared, scheduler
        self.spawner = Spawner()
        self.bus = EventBus()
        self.events = self.bus.subscribe()
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="bt-state-"))
        self.profile = make_profile(**profile)
        self.adapters = FakeAdapters(self.cloud, shared, scheduler)
        self.rt = self._runtime()

    def _runtime(self) -> ProfileRuntime:
        statefile = StateFile(self.state_dir / "daemon-state.json")
        return ProfileRuntime(self.profile, self.settings, self.adapters,  # type: ignore[arg-type]
                              self.bus, statefile, clock=self.clock, spawn=self.spawner,
                              timings=lc.Timings(ready_timeout=300, recheck=10))

    def restart(self) -> ProfileRuntime:
        self.adapters = FakeAdapters(self.cloud, self.shared, self.scheduler)
        self.rt = self._runtime()
        return self.rt

    def ticks(self, seconds: float, every: float = 0.25) -> None:
        """Let `seconds` pass, ticking like the daemon's ticker."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.advance(min(every, end - self.clock.now))
            self.rt.tick()

    def published(self, kind: str | None = None) -> list[dict[str, Any]]:
        out = []
        while (event := self.events.get(timeout=0)) is not None:
            out.append(event)
        return [e for e in out if kind is None or e["type"] == kind]

    @property
    def link(self) -> FakeLink:
        return self.adapters.links[-1]

    def status(self) -> dict[str, Any]:
        return self.rt.snapshot()
