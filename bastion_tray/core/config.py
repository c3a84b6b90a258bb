"""The configuration contract (DESIGN.md "Configuration"): TOML → frozen dataclasses.

A bad file never half-loads: `load_config` collects every problem, each naming the file, the
table and key, and what was expected, then raises one ConfigError that lists them all.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from bastion_tray.core.durations import MAX_CONFIG_DURATION, MAX_CONFIG_WAIT
from bastion_tray.core.errors import ConfigError
from bastion_tray.core.schema import Problems, TableReader
from bastion_tray.core.team import default_user_id, user_id_problem
from bastion_tray.core.text import clip, clip_repr

T = TypeVar("T")

DEFAULT_IDLE_TIMEOUT = 30 * 60.0
DEFAULT_WARN_BEFORE = 2 * 60.0
DEFAULT_LEASE_TTL = 10 * 60.0
DEFAULT_BACKSTOP = 60 * 60.0
DEFAULT_PUBLIC_IP_URL = "https://checkip.amazonaws.com"
#: "open": security groups untouched; "my-ip": a /32 rule for this machine only while in use
INGRESS_MODES = ("open", "my-ip")
#: "key": identity_file or ssh-agent; "ec2-instance-connect": a fresh in-memory key per
#: connection, pushed with SendSSHPublicKey
IDENTITY_MODES = ("key", "ec2-instance-connect")
EC2_INSTANCE_CONNECT = "ec2-instance-connect"
#: a lease is renewed every third of its ttl and a backstop pushed every third of it: below
#: these, the renewals would be API calls every few seconds
MIN_LEASE_TTL = 15.0
MIN_BACKSTOP = 30.0
MAX_LEASE_TTL = 24 * 3600.0
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")


# Every duration key is finite, ≥ 0 and bounded (durations.py): idle_timeout and warn_before at
# most MAX_CONFIG_DURATION (7 d); the waits of one connection (ready_timeout, lazy_wait,
# keepalive_interval) at least 1 s and at most MAX_CONFIG_WAIT (1 h). An unbounded value would
# overflow every later sum with the clock.


@dataclass(frozen=True)
class Settings:
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT  # seconds without activity before an auto-stop
    warn_before: float = DEFAULT_WARN_BEFORE  # notify this long before an idle stop
    terminal: tuple[str, ...] | None = None  # argv prefix for "Open shell"; None: platform default
    ready_timeout: float = 300.0  # start → SSH answering, before we give up
    lazy_wait: float = 180.0  # how long a connection to a stopped forward waits for the bastion
    keepalive_interval: float = 15.0  # SSH keepalive; a peer silent for 3 intervals is dead
    user_id: str = field(default_factory=default_user_id)  # names this user's lease tag
    lease_ttl: float = DEFAULT_LEASE_TTL  # a lease's life; renewed every third of it
    data_plane: str = "auto"  # what moves forwarded bytes: one of DATA_PLANES
    public_ip_url: str = DEFAULT_PUBLIC_IP_URL  # answers this machine's public IPv4 as text


@dataclass(frozen=True)
class BastionConfig:
    instance_id: str | None  # exactly one of instance_id / name
    name: str | None  # the instance's Name tag
    user: str  # login user on the bastion
    identity_file: Path | None  # None: keys from ssh-agent
    host: str = "auto"  # "auto": Elastic IP, else public IP, looked up after each start
    port: int = 22
    host_key: str | None = None  # "SHA256:…" pin; otherwise known_hosts
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT  # already merged with [settings]
    auto_stop: bool = True  # stop the instance when idle
    backstop: float | None = DEFAULT_BACKSTOP  # the cloud-side stop; None: "off"
    backstop_role: str | None = None  # the IAM role EventBridge Scheduler stops it with
    ingress: str = "open"  # one of INGRESS_MODES
    ingress_group: str | None = None  # "sg-…" or a group name; None: the group opening `port`
    identity: str = "key"  # one of IDENTITY_MODES

    @property
    def instance_connect(self) -> bool:
        return self.identity == EC2_INSTANCE_CONNECT

    @property
    def label(self) -> str:
        return self.instance_id or f"Name={self.name}"


@dataclass(frozen=True)
class HostConfig:
    name: str  # the key under [profiles.X.hosts]
    hostname: str  # address as the bastion sees it
    user: str
    identity_file: Path | None
    port: int = 22
    identity: str = "key"  # one of IDENTITY_MODES; ec2-instance-connect needs instance_id
    instance_id: str | None = None  # the host's EC2 instance (for ec2-instance-connect)

    @property
    def instance_connect(self) -> bool:
        return self.identity == EC2_INSTANCE_CONNECT


@dataclass(frozen=True)
class ForwardConfig:
    name: str  # the key under [profiles.X.forwards]
    local_port: int
    remote_host: str  # resolved by the bastion, not locally
    remote_port: int
    bind: str = "127.0.0.1"

    @property
    def local(self) -> str:
        return f"{self.bind}:{self.local_port}"


@dataclass(frozen=True)
class Profile:
    name: str
    region: str
    aws_profile: str | None
    bastion: BastionConfig
    hosts: Mapping[str, HostConfig] = field(default_factory=dict)
    forwards: Mapping[str, ForwardConfig] = field(default_factory=dict)
    warn_before: float = DEFAULT_WARN_BEFORE

    def forward(self, name: str) -> ForwardConfig:
        return _lookup(self.forwards, name, "forward", self.name)

    def host(self, name: str) -> HostConfig:
        return _lookup(self.hosts, name, "host", self.name)


def _lookup(table: Mapping[str, T], name: str, what: str, profile: str) -> T:
    """table[name], else a UsageError (exit 2) that lists the known names."""
    from bastion_tray.core.errors import UsageError

    if name in table:
        return table[name]
    known = ", ".join(sorted(table)) or "none"
    raise UsageError(f"unknown {what} {clip_repr(name)} in profile {clip(profile)} "
                     f"(known {what}s: {clip(known, 300)})",
                     hint=f"{what}s are [profiles.{clip(profile)}.{what}s.NAME] tables in the "
                          "config")


@dataclass(frozen=True)
class Config:
    path: Path
    settings: Settings
    profiles: Mapping[str, Profile]

    def profile(self, name: str) -> Profile:
        from bastion_tray.core.errors import UsageError

        try:
            return self.profiles[name]
        except KeyError:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise UsageError(f"unknown profile {clip_repr(name)} "
                             f"(known profiles: {clip(known, 300)})",
                             hint=f"profiles are defined in {_shown(self.path)}") from None


def load_config(path: Path, source: str = "--config") -> Config:
    """Read and validate `path`; raise ConfigError naming every problem found."""
    where = _shown(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        # the first run: what to do comes first, on the same line as where it looked
        raise ConfigError(f"no config file at {where} (chosen by {source}) — run "
                          "`bastion-tray init` to create one, or pass --config PATH",
                          hint="or set $BASTION_TRAY_CONFIG; the README's configuration "
                               "reference lists every key") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the config file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: TOML syntax error: {clip(str(exc), 200)}") from None
    return parse_config(data, path)


def profile_names(path: Path) -> list[str]:
    """The names of the file's [profiles.NAME] tables, read leniently for shell completion: a
    file with problems still lists its profiles; a missing or unreadable one lists none."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    profiles = data.get("profiles")
    return sorted(profiles) if isinstance(profiles, dict) else []


def parse_config(data: Mapping[str, object], path: Path) -> Config:
    problems = Problems(path)
    top = TableReader(data, "", problems)
    settings = _settings(top.table("settings"))
    profiles: dict[str, Profile] = {}
    profiles_table = top.table("profiles")
    if not profiles_table.names():
        problems.add("", "profiles", "expected at least one [profiles.NAME] table")
    for name in profiles_table.names():
        profile = _profile(name, profiles_table.table(name, required=True), settings)
        if profile is not None:
            profiles[name] = profile
    top.reject_unknown()
    _check_ports_unique(profiles, problems)
    problems.raise_if_any()
    return Config(path=path, settings=settings, profiles=profiles)


#: "openssh": an ssh ControlMaster carries the bytes (fails where it can't run); "paramiko": the
#: daemon's own transport does; "auto": openssh where it can run, else paramiko
DATA_PLANES = ("auto", "openssh", "paramiko")


def _settings(t: TableReader) -> Settings:
    terminal = t.str_list("terminal")
    settings = Settings(
        idle_timeout=t.duration("idle_timeout", DEFAULT_IDLE_TIMEOUT, maximum=MAX_CONFIG_DURATION),
        warn_before=t.duration("warn_before", DEFAULT_WARN_BEFORE, maximum=MAX_CONFIG_DURATION),
        terminal=tuple(terminal) if terminal is not None else None,
        ready_timeout=t.duration("ready_timeout", 300.0, minimum=1, maximum=MAX_CONFIG_WAIT),
        lazy_wait=t.duration("lazy_wait", 180.0, minimum=1, maximum=MAX_CONFIG_WAIT),
        keepalive_interval=t.duration("keepalive_interval", 15.0, minimum=1,
                                      maximum=MAX_CONFIG_WAIT),
        lease_ttl=t.duration("lease_ttl", DEFAULT_LEASE_TTL, minimum=MIN_LEASE_TTL,
                             maximum=MAX_LEASE_TTL),
    )
    plane = t.text("data_plane")
    if plane is not None and plane not in DATA_PLANES:
        t.problem("data_plane", f"expected one of {', '.join(DATA_PLANES)}, got {plane!r:.40}")
    elif plane is not None:
        settings = replace(settings, data_plane=plane)
    url = t.text("public_ip_url")
    if url is not None and not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", url):
        t.problem("public_ip_url", "expected an http:// or https:// URL that answers the public "
                  f"IPv4 address as text (default {DEFAULT_PUBLIC_IP_URL}), got {clip_repr(url)}")
    elif url is not None:
        settings = replace(settings, public_ip_url=url)
    user_id = t.text("user_id")
    if user_id is not None:
        problem = user_id_problem(user_id)
        if problem:
            t.problem("user_id", problem)
        else:
            settings = replace(settings, user_id=user_id)
    t.reject_unknown()
    return settings


def _profile(name: str, t: TableReader, settings: Settings) -> Profile | None:
    t.check_name(name)
    region = t.text("region", required=True)
    aws_profile = t.text("aws_profile")
    warn_before = t.duration("warn_before", settings.warn_before, maximum=MAX_CONFIG_DURATION)
    bastion = _bastion(t.table("bastion", required=True), settings)
    default_user = bastion.user if bastion else None
    default_key = bastion.identity_file if bastion else None
    hosts_t, forwards_t = t.table("hosts"), t.table("forwards")
    hosts = {h: _host(h, hosts_t.table(h, required=True), default_user, default_key)
             for h in hosts_t.names()}
    forwards = {f: _forward(f, forwards_t.table(f, required=True)) for f in forwards_t.names()}
    t.reject_unknown()
    if bastion is None or region is None:
        return None
    return Profile(name=name, region=region, aws_profile=aws_profile, bastion=bastion,
                   hosts=hosts, forwards=forwards, warn_before=warn_before)


def _bastion(t: TableReader, settings: Settings) -> BastionConfig:
    instance_id = t.instance_id("instance_id")
    name = t.text("name")
    has_id, has_name = "instance_id" in t.data, "name" in t.data
    if has_id == has_name and t.present:
        t.problem("instance_id", "expected exactly one of instance_id = \"i-…\" or name = \"…\" "
                  + ("(both are set)" if has_id else "(neither is set)"))
    bastion = BastionConfig(
        instance_id=instance_id,
        name=name,
        user=t.text("user", default="ec2-user") or "ec2-user",
        identity_file=t.path("identity_file"),
        host=t.text("host", default="auto") or "auto",
        port=t.port("port", 22),
        host_key=t.fingerprint("host_key"),
        idle_timeout=t.duration("idle_timeout", settings.idle_timeout, minimum=1,
                                maximum=MAX_CONFIG_DURATION),
        auto_stop=t.flag("auto_stop", True),
        backstop=_backstop(t),
        backstop_role=_role_arn(t, "backstop_role"),
        ingress=t.choice("ingress", INGRESS_MODES, "open"),
        ingress_group=t.security_group("ingress_group"),
        identity=t.choice("identity", IDENTITY_MODES, "key"),
    )
    if bastion.instance_connect and bastion.identity_file is not None:
        t.problem("identity_file", "not used with identity = \"ec2-instance-connect\" (a fresh "
                  "key is pushed per connection); remove one of the two")
    t.reject_unknown()
    return bastion


def _backstop(t: TableReader) -> float | None:
    """A duration, or "off"."""
    if t.data.get("backstop") == "off":
        t.text("backstop")  # marks the key as known
        return None
    return t.duration("backstop", DEFAULT_BACKSTOP, minimum=MIN_BACKSTOP,
                      maximum=MAX_CONFIG_DURATION)


def _role_arn(t: TableReader, key: str) -> str | None:
    value = t.text(key)
    if value is not None and not _ROLE_ARN.fullmatch(value):
        t.problem(key, "expected an IAM role ARN like \"arn:aws:iam::123456789012:role/"
                  f"bastion-tray-backstop\", got {clip_repr(value)}")
        return None
    return value


def _host(name: str, t: TableReader, user: str | None, key: Path | None) -> HostConfig:
    t.check_name(name)
    if name == "bastion":  # its alias, <profile>-bastion, is the bastion's own (core/trust.py)
        t.problems.add(t.name, "", "a host cannot be named 'bastion': <profile>-bastion is the "
                       "bastion's own ssh name; pick another name")
    identity = t.choice("identity", IDENTITY_MODES, "key")
    own_key = t.path("identity_file")
    host = HostConfig(
        name=name,
        hostname=t.text("hostname", required=True) or "",
        user=t.text("user", default=user) or "ec2-user",
        identity_file=own_key or (None if identity == EC2_INSTANCE_CONNECT else key),
        port=t.port("port", 22),
        identity=identity,
        instance_id=t.instance_id("instance_id"),
    )
    if host.instance_connect and host.instance_id is None and t.present:
        t.problem("instance_id", "expected the host's instance id (\"i-…\"): identity = "
                  "\"ec2-instance-connect\" pushes the key to that instance")
    if host.instance_connect and own_key is not None:
        t.problem("identity_file", "not used with identity = \"ec2-instance-connect\"; remove "
                  "one of the two")
    t.reject_unknown()
    return host


def _forward(name: str, t: TableReader) -> ForwardConfig:
    t.check_name(name)
    bind = t.text("bind", default="127.0.0.1") or "127.0.0.1"
    allow = t.flag("allow_non_loopback_bind", False)
    from bastion_tray.core.netguard import is_loopback

    if not is_loopback(bind) and not allow:
        t.problem("bind", f"{clip_repr(bind)} is not a loopback address: anyone on that "
                  "network could use the tunnel. Expected 127.0.0.1 (the default), or set "
                  "allow_non_loopback_bind = true to ask for it explicitly")
    forward = ForwardConfig(
        name=name,
        local_port=t.port("local_port", None),
        remote_host=t.text("remote_host", required=True) or "",
        remote_port=t.port("remote_port", None),
        bind=bind,
    )
    t.reject_unknown()
    return forward


def _check_ports_unique(profiles: Mapping[str, Profile], problems: Problems) -> None:
    seen: dict[int, str] = {}
    for profile in profiles.values():
        for fwd in profile.forwards.values():
            where = f"profiles.{clip(profile.name)}.forwards.{clip(fwd.name)}"
            if fwd.local_port and fwd.local_port in seen:
                problems.add(where, "local_port", f"port {fwd.local_port} is already used by "
                             f"[{seen[fwd.local_port]}]; expected a local port of its own")
            elif fwd.local_port:
                seen[fwd.local_port] = where


def _shown(path: Path) -> str:
    """A config path as messages show it: a path is user input too (--config, the env)."""
    return clip(str(path), 300)


def expand_path(value: str) -> Path:
    return Path(os.path.expandvars(value)).expanduser()
