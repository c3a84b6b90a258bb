"""The daemon's status (`status --json`, DESIGN.md contract) as frozen values (the one status
line made from them is core/statusline.py).

`Status.from_json` reads a reply as the daemon sends it: keys this version does not know are
kept in `extra` (the daemon grows new ones), optional keys may be missing, and anything of a
wrong type is a `StatusFormatError` (a ValueError) that names the key and what was expected —
never a KeyError or TypeError deep inside a renderer. `to_json` gives back exactly what
`from_json` read (unknown keys included, missing optional keys still missing), so a test can
record a real reply and replay it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, TypeVar

from bastion_tray.core.errors import DaemonError

JSON = dict[str, Any]
T = TypeVar("T")


class StatusFormatError(DaemonError, ValueError):
    """A status that is not the documented shape; the message says where and what. A
    DaemonError too, so the CLI and the tray present it like any answer that makes no sense."""

    def __init__(self, message: str) -> None:
        super().__init__(message, hint="a daemon of another version answers? `bastion-tray "
                                       "shutdown` lets the next command start this one")


# ---- reading one JSON object -------------------------------------------------------------------


def _kind(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


class _Fields:
    """One JSON object being read: typed getters that name `where` in their errors, and a
    record of which keys were read (the rest is `extra`) and which optional ones were absent."""

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise StatusFormatError(f"{where}: expected an object, got {_kind(value)}")
        self.data: Mapping[str, Any] = value
        self.where = where
        self.read: set[str] = set()
        self.absent: set[str] = set()

    def take(self, key: str, required: bool) -> tuple[bool, object]:
        self.read.add(key)
        if key in self.data:
            return True, self.data[key]
        if required:
            raise StatusFormatError(f"{self.where}.{key}: missing")
        self.absent.add(key)
        return False, None

    def _wrong(self, key: str, expected: str, value: object) -> StatusFormatError:
        return StatusFormatError(f"{self.where}.{key}: expected {expected}, got {_kind(value)} "
                                 f"{value!r}"[:300])

    def text(self, key: str, *, required: bool = True, default: str = "") -> str:
        found, value = self.take(key, required)
        if not found:
            return default
        if not isinstance(value, str):
            raise self._wrong(key, "a string", value)
        return value

    def text_or_none(self, key: str, *, required: bool = False) -> str | None:
        _, value = self.take(key, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._wrong(key, "a string or null", value)
        return value

    def flag(self, key: str, *, required: bool = False, default: bool = False) -> bool:
        found, value = self.take(key, required)
        if not found:
            return default
        if not isinstance(value, bool):
            raise self._wrong(key, "true or false", value)
        return value

    def count(self, key: str, *, required: bool = False) -> int:
        found, value = self.take(key, required)
        if not found:
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, "an integer", value)
        return value

    def int_or_none(self, key: str, *, required: bool = False) -> int | None:
        _, value = self.take(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, "an integer or null", value)
        return value

    def seconds(self, key: str, *, required: bool = False) -> float | None:
        """A duration in seconds or null; kept as sent (an int stays an int), but finite."""
        _, value = self.take(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._wrong(key, "a number of seconds or null", value)
        if not math.isfinite(value):
            raise self._wrong(key, "a finite number of seconds", value)
        return value

    def names(self, key: str) -> tuple[str, ...]:
        found, value = self.take(key, False)
        if not found:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._wrong(key, "a list of strings", value)
        return tuple(value)

    def table(self, key: str, read: Callable[[object, str], T], *,
              required: bool = True) -> Mapping[str, T]:
        """An object of objects (`forwards`, `profiles`), each read by `read`."""
        found, value = self.take(key, required)
        if not found:
            return MappingProxyType({})
        inner = _Fields(value, f"{self.where}.{key}")
        return MappingProxyType({name: read(item, f"{inner.where}.{name}")
                                 for name, item in inner.data.items()})

    def extra(self) -> Mapping[str, Any]:
        return _frozen_copy({k: v for k, v in self.data.items() if k not in self.read})


def _frozen_copy(values: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(copy.deepcopy(dict(values)))


def _emit(known: JSON, extra: Mapping[str, Any], absent: frozenset[str]) -> JSON:
    """The JSON object: the known keys that were present, then the unknown ones as read."""
    out = {k: v for k, v in known.items() if k not in absent}
    out.update(copy.deepcopy(dict(extra)))
    return out


def _mapping_field() -> Any:
    return field(default_factory=lambda: MappingProxyType({}), hash=False)


def _absent_field() -> Any:
    # which optional keys the reply left out: to_json leaves them out again
    return field(default=frozenset(), compare=False, repr=False)


# ---- the values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BastionStatus:
    instance_id: str | None  # None: configured by Name tag and not found yet
    state: str  # EC2's: pending, running, stopping, stopped, …; "unknown" before the first look
    host: str | None  # "ip:port" while running, else None
    ssh: str  # disconnected, connecting, connected
    name: str | None = None  # the Name tag
    extra: Mapping[str, Any] = _mapping_field()
    absent: frozenset[str] = _absent_field()

    @classmethod
    def from_json(cls, value: object, where: str = "bastion") -> BastionStatus:
        f = _Fields(value, where)
        return cls(instance_id=f.text_or_none("instance_id", required=True),
                   state=f.text("state"), host=f.text_or_none("host", required=True),
                   ssh=f.text("ssh"), name=f.text_or_none("name"), extra=f.extra(),
                   absent=frozenset(f.absent))

    def to_json(self) -> JSON:
        return _emit({"instance_id": self.instance_id, "name": self.name, "state": self.state,
                      "host": self.host, "ssh": self.ssh}, self.extra, self.absent)


@dataclass(frozen=True)
class ForwardStatus:
    local: str  # "127.0.0.1:13306"
    listening: bool
    active_connections: int
    remote: str | None = None  # "rds-host:3306"
    total_connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    extra: Mapping[str, Any] = _mapping_field()
    absent: frozenset[str] = _absent_field()

    @classmethod
    def from_json(cls, value: object, where: str = "forward") -> ForwardStatus:
        f = _Fields(value, where)
        return cls(local=f.text("local"), listening=f.flag("listening", required=True),
                   active_connections=f.count("active_connections", required=True),
                   remote=f.text_or_none("remote"),
                   total_connections=f.count("total_connections"),
                   bytes_up=f.count("bytes_up"), bytes_down=f.count("bytes_down"),
                   extra=f.extra(), absent=frozenset(f.absent))

    def to_json(self) -> JSON:
        return _emit({"local": self.local, "remote": self.remote, "listening": self.listening,
                      "active_connections": self.active_connections,
                      "total_connections": self.total_connections, "bytes_up": self.bytes_up,
                      "bytes_down": self.bytes_down}, self.extra, self.absent)


@dataclass(frozen=True)
class ErrorStatus:
    kind: str  # the error's stable name: host_key, credentials, cloud, …
    message: str
    hint: str | None = None  # what to do: "run: bastion-tray trust foo"
    extra: Mapping[str, Any] = _mapping_field()
    absent: frozenset[str] = _absent_field()

    @classmethod
    def from_json(cls, value: object, where: str = "error") -> ErrorStatus:
        f = _Fields(value, where)
        return cls(kind=f.text("kind", required=False, default="error"),
                   message=f.text("message"), hint=f.text_or_none("hint"), extra=f.extra(),
                   absent=frozenset(f.absent))

    def to_json(self) -> JSON:
        return _emit({"kind": self.kind, "message": self.message, "hint": self.hint},
                     self.extra, self.absent)


@dataclass(frozen=True)
class ProfileStatus:
    """One profile's entry of `status --json`."""

    bastion: BastionStatus
    forwards: Mapping[str, ForwardStatus] = _mapping_field()
    sessions: int = 0  # open proxy and shell channels
    waiting: int = 0  # requests waiting for the bastion to come up (connections, ssh, up)
    idle_seconds: float | None = None  # null while anything is active or auto-stop is off
    stops_in_seconds: float | None = None  # likewise
    hosts: tuple[str, ...] = ()  # the "Open shell" targets
    idle_reason: str | None = None  # why it does (not) stop, while running
    auto_stop: bool = True
    link_losses: int = 0
    last_link_loss: str | None = None
    phase: str | None = None  # what a bring-up is doing now: "waiting for SSH", …
    starting_for_seconds: float | None = None  # not null while a bring-up runs
    started_by_daemon: bool = False  # so Quit stops it
    error: ErrorStatus | None = None
    in_use_by: tuple[str, ...] = ()  # teammates whose live lease kept it from stopping
    other_sessions: int = 0  # others' SSH connections on the bastion, as last counted
    waiting_for_others: bool = False  # idle, and the stop waits until the others are gone
    extra: Mapping[str, Any] = _mapping_field()
    absent: frozenset[str] = _absent_field()

    def __post_init__(self) -> None:
        if not isinstance(self.forwards, MappingProxyType):
            object.__setattr__(self, "forwards", MappingProxyType(dict(self.forwards)))

    @classmethod
    def from_json(cls, value: object, where: str = "profile") -> ProfileStatus:
        f = _Fields(value, where)
        _, error = f.take("error", False)
        return cls(
            bastion=BastionStatus.from_json(f.take("bastion", True)[1], f"{where}.bastion"),
            forwards=f.table("forwards", ForwardStatus.from_json),
            sessions=f.count("sessions", required=True), waiting=f.count("waiting"),
            idle_seconds=f.seconds("idle_seconds", required=True),
            stops_in_seconds=f.seconds("stops_in_seconds", required=True),
            hosts=f.names("hosts"), idle_reason=f.text_or_none("idle_reason"),
            auto_stop=f.flag("auto_stop", default=True), link_losses=f.count("link_losses"),
            last_link_loss=f.text_or_none("last_link_loss"), phase=f.text_or_none("phase"),
            starting_for_seconds=f.seconds("starting_for_seconds"),
            started_by_daemon=f.flag("started_by_daemon"),
            error=None if error is None else ErrorStatus.from_json(error, f"{where}.error"),
            in_use_by=f.names("in_use_by"), other_sessions=f.count("other_sessions"),
            waiting_for_others=f.flag("waiting_for_others"),
            extra=f.extra(), absent=frozenset(f.absent))

    def to_json(self) -> JSON:
        return _emit({
            "bastion": self.bastion.to_json(),
            "forwards": {name: fwd.to_json() for name, fwd in self.forwards.items()},
            "hosts": list(self.hosts), "sessions": self.sessions, "waiting": self.waiting,
            "idle_seconds": self.idle_seconds, "stops_in_seconds": self.stops_in_seconds,
            "idle_reason": self.idle_reason, "auto_stop": self.auto_stop,
            "link_losses": self.link_losses, "last_link_loss": self.last_link_loss,
            "phase": self.phase, "starting_for_seconds": self.starting_for_seconds,
            "started_by_daemon": self.started_by_daemon,
            "error": None if self.error is None else self.error.to_json(),
            "in_use_by": list(self.in_use_by), "other_sessions": self.other_sessions,
            "waiting_for_others": self.waiting_for_others,
        }, self.extra, self.absent)

    # ---- reading it ------------------------------------------------------------------------

    @property
    def starting(self) -> bool:
        return self.starting_for_seconds is not None

    @property
    def running(self) -> bool:
        return self.bastion.state == "running"

    @property
    def connections(self) -> int:
        """What keeps it from idling: open connections through the forwards plus sessions."""
        return sum(f.active_connections for f in self.forwards.values()) + self.sessions

    def aged(self, seconds: float) -> ProfileStatus:
        """This status as it would read `seconds` after the daemon sent it: the starting clock
        runs on, the idle clock too, and the countdown runs down."""
        if seconds <= 0:
            return self
        return replace(
            self,
            starting_for_seconds=None if self.starting_for_seconds is None
            else self.starting_for_seconds + seconds,
            idle_seconds=None if self.idle_seconds is None else self.idle_seconds + seconds,
            stops_in_seconds=None if self.stops_in_seconds is None
            else max(0.0, self.stops_in_seconds - seconds))


@dataclass(frozen=True)
class DaemonInfo:
    pid: int | None = None
    version: str | None = None
    config: str | None = None  # the config file it read
    config_changed: bool = False  # that file changed since
    extra: Mapping[str, Any] = _mapping_field()
    absent: frozenset[str] = _absent_field()

    @classmethod
    def from_json(cls, value: object, where: str = "daemon") -> DaemonInfo:
        f = _Fields(value, where)
        return cls(pid=f.int_or_none("pid"), version=f.text_or_none("version"),
                   config=f.text_or_none("config"), config_changed=f.flag("config_changed"),
                   extra=f.extra(), absent=frozenset(f.absent))

    def to_json(self) -> JSON:
        return _emit({"pid": self.pid, "version": self.version, "config": self.config,
                      "config_changed": self.config_changed}, self.extra, self.absent)


@dataclass(frozen=True)
class Status:
    """The whole reply of `status` (and of `subscribe`, and each event's `status`)."""

    profiles: Mapping[str, ProfileStatus] = _mapping_field()
    daemon: DaemonInfo | None = None
    extra: Mapping[str, Any] = _mapping_field()
    absent: frozenset[str] = _absent_field()

    def __post_init__(self) -> None:
        if not isinstance(self.profiles, MappingProxyType):
            object.__setattr__(self, "profiles", MappingProxyType(dict(self.profiles)))

    @classmethod
    def from_json(cls, value: object, where: str = "status") -> Status:
        f = _Fields(value, where)
        _, daemon = f.take("daemon", False)
        return cls(profiles=f.table("profiles", ProfileStatus.from_json),
                   daemon=None if daemon is None else DaemonInfo.from_json(daemon,
                                                                          f"{where}.daemon"),
                   extra=f.extra(), absent=frozenset(f.absent))

    def to_json(self) -> JSON:
        return _emit({"profiles": {n: p.to_json() for n, p in self.profiles.items()},
                      "daemon": None if self.daemon is None else self.daemon.to_json()},
                     self.extra, self.absent)

    @property
    def any_starting(self) -> bool:
        return any(p.starting for p in self.profiles.values())

    def aged(self, seconds: float) -> Status:
        if seconds <= 0:
            return self
        return replace(self, profiles={n: p.aged(seconds) for n, p in self.profiles.items()})
