"""A profile plan → TOML text, added to a config file's text without touching the rest.

Pure: no I/O. `bastion-tray init` builds a ProfilePlan from what the AWS account shows, renders
it here, and validates the whole new text with config.parse_config before it writes anything.
The existing text is kept byte for byte: a new profile's tables are appended; a replaced one
(--force) has its own tables cut out, and the cut is checked by parsing both texts.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bastion_tray.core.config import Config, parse_config
from bastion_tray.core.errors import ConfigError, UsageError

#: what config.py accepts as a profile, host or forward name (it becomes an ssh Host name)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_BASTION_WORD = re.compile(r"[-_.\s]*bastion[-_.\s]*", re.IGNORECASE)

#: the first local port to try, by RDS engine family; others get 10000 + their port
MYSQL_BASE, POSTGRES_BASE = 13306, 15432
_ENGINE_BASES = (("aurora-postgresql", POSTGRES_BASE), ("postgres", POSTGRES_BASE),
                 ("aurora", MYSQL_BASE), ("mysql", MYSQL_BASE), ("mariadb", MYSQL_BASE))
_PORT_BASES = {3306: MYSQL_BASE, 5432: POSTGRES_BASE}
HEADER = ("# bastion-tray configuration; see the README's configuration reference.\n"
          "# Written by `bastion-tray init`: edit freely.\n"
          "\n"
          "# [settings]\n"
          "# idle_timeout = \"30m\"   # stop the bastion after this long without connections\n")


@dataclass(frozen=True)
class BastionPlan:
    instance_id: str
    user: str
    port: int
    identity_file: str | None  # as the user typed it ("~/.ssh/foo.pem"); None: ssh-agent
    note: str = ""  # a comment for the table: its Name tag, address
    backstop_role: str | None = None  # the IAM role ARN of the backstop; None: not written


@dataclass(frozen=True)
class HostPlan:
    name: str
    hostname: str
    port: int | None = None  # None: the default, 22
    note: str = ""


@dataclass(frozen=True)
class ForwardPlan:
    name: str
    local_port: int
    remote_host: str
    remote_port: int
    note: str = ""


@dataclass(frozen=True)
class ProfilePlan:
    name: str
    region: str
    aws_profile: str | None
    bastion: BastionPlan
    hosts: tuple[HostPlan, ...] = field(default=())
    forwards: tuple[ForwardPlan, ...] = field(default=())
    note: str = ""


# --- names and ports -----------------------------------------------------------------------------

def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def sanitize_name(text: str) -> str:
    """`text` as a name: other characters become '-', runs collapse; "" when nothing is left."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text.strip())
    name = re.sub(r"-{2,}", "-", name)
    return re.sub(r"^[^A-Za-z0-9]+", "", name).rstrip("-.")


def profile_name_for(bastion_name: str | None) -> str:
    """foo-bastion → foo, bastion-prod → prod, Bastion → default."""
    name = sanitize_name(_BASTION_WORD.sub("-", bastion_name or "").strip("-"))
    return name if valid_name(name) else "default"


def host_name_for(name_tag: str, bastion_name: str | None) -> str:
    """foo-appserver → appserver when the bastion is foo-bastion: the ssh alias that
    `ssh-config` makes (PROFILE-HOST) is then foo-appserver again, not foo-foo-appserver."""
    name = sanitize_name(name_tag)
    prefix = profile_name_for(bastion_name) + "-"
    stripped = name[len(prefix):] if name.startswith(prefix) else name
    return stripped if valid_name(stripped) else name


def unique_name(base: str, taken: Iterable[str]) -> str:
    """`base`, else base-2, base-3, …: the first not in `taken`."""
    used = set(taken)
    if base not in used:
        return base
    return next(f"{base}-{n}" for n in range(2, len(used) + 3) if f"{base}-{n}" not in used)


def local_port_base(engine: str | None, remote_port: int) -> int:
    """Where to start looking for a forward's local port: 13306 for MySQL-like engines, 15432
    for PostgreSQL-like ones, else 10000 + the remote port (the port itself above 55535)."""
    engine = (engine or "").lower()
    for prefix, base in _ENGINE_BASES:
        if engine.startswith(prefix):
            return base
    if remote_port in _PORT_BASES:
        return _PORT_BASES[remote_port]
    return remote_port + 10000 if remote_port <= 55535 else remote_port


def choose_local_port(base: int, taken: Iterable[int], is_free: Callable[[int], bool]) -> int:
    """The first port from `base` up (then from 10000) not in `taken` for which is_free says so."""
    used = set(taken)
    for port in itertools.chain(range(base, 65536), range(10000, base)):
        if port not in used and is_free(port):
            return port
    raise UsageError("no free local port found for a forward",
                     hint="pick one: --forward NAME=LOCAL_PORT:HOST:PORT")


@dataclass(frozen=True)
class TargetSpec:
    """What a --forward or --host value says: NAME=[LOCAL_PORT:]TARGET[:PORT]."""

    name: str
    target: str  # an RDS identifier, an endpoint, an instance id, a host or an address
    port: int | None  # the remote port, when given
    local_port: int | None  # forwards only


def parse_target_spec(flag: str, value: str, *, local: bool) -> TargetSpec:
    """Parse `NAME=TARGET`, `NAME=HOST:PORT`, `NAME=[IPv6]:PORT` and, when `local`,
    `NAME=LOCAL_PORT:TARGET[:PORT]` (ssh -L order). Raises UsageError naming the flag."""
    form = ("NAME=[LOCAL_PORT:]RDS-ID|ENDPOINT|HOST:PORT" if local
            else "NAME=INSTANCE-ID|ADDRESS[:PORT]")
    name, sep, rest = value.partition("=")
    name, rest = name.strip(), rest.strip()
    if not sep or not rest:
        raise UsageError(f"{flag} {value!r}: expected {form}")
    if not valid_name(name):
        raise UsageError(f"{flag} {value!r}: the name {name!r} must be letters, digits, '-', '_' "
                         "or '.' (it becomes an ssh Host name)")
    local_port = None
    head, colon, tail = rest.partition(":")
    if local and colon and head.isdigit() and not tail.isdigit():
        local_port, rest = _port(flag, value, head), tail
    port = None
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", rest)
    if bracketed:
        rest, port_text = bracketed.group(1), bracketed.group(2)
        port = _port(flag, value, port_text) if port_text else None
    elif rest.count(":") == 1:
        rest, port_text = rest.split(":")
        port = _port(flag, value, port_text)
    if not rest or any(c.isspace() for c in rest):
        raise UsageError(f"{flag} {value!r}: expected {form}")
    return TargetSpec(name, rest, port, local_port)


def _port(flag: str, value: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError(f"{flag} {value!r}: {text!r} is not a port number 1–65535")
    return int(text)


# --- TOML text ----------------------------------------------------------------------------------

def toml_string(text: str) -> str:
    escaped = []
    for char in text:
        if char in {'"', "\\"}:
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04X}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def _table(path: tuple[str, ...], entries: Mapping[str, str | int | None], note: str) -> str:
    head = "[" + ".".join(toml_key(p) for p in path) + "]"
    if note:
        head += "  # " + re.sub(r"[\x00-\x1f\x7f]+", " ", note)
    lines = [head] + [f"{toml_key(k)} = {v if isinstance(v, int) else toml_string(v)}"
                      for k, v in entries.items() if v is not None]
    return "\n".join(lines) + "\n"


def render_profile(plan: ProfilePlan) -> str:
    """The profile's tables, ready to append to a config file."""
    root = ("profiles", plan.name)
    b = plan.bastion
    tables = [
        _table(root, {"region": plan.region, "aws_profile": plan.aws_profile}, plan.note),
        _table((*root, "bastion"), {"instance_id": b.instance_id, "user": b.user,
                                    "identity_file": b.identity_file, "port": b.port,
                                    "backstop_role": b.backstop_role}, b.note),
    ]
    tables += [_table((*root, "hosts", h.name), {"hostname": h.hostname, "port": h.port}, h.note)
               for h in plan.hosts]
    tables += [_table((*root, "forwards", f.name),
                      {"local_port": f.local_port, "remote_host": f.remote_host,
                       "remote_port": f.remote_port}, f.note) for f in plan.forwards]
    return "\n".join(tables)


def plan_line(plan: ForwardPlan | HostPlan) -> str:
    """One line for a list of what will be written."""
    if isinstance(plan, ForwardPlan):
        line = f"{plan.name}: 127.0.0.1:{plan.local_port} → {plan.remote_host}:{plan.remote_port}"
    else:
        line = f"{plan.name}: {plan.hostname}" + (f":{plan.port}" if plan.port else "")
    return line + (f"  ({plan.note})" if plan.note else "")


def validated(text: str, path: Path) -> Config:
    """`text` as the config it would be at `path`; ConfigError (saying nothing was written)."""
    try:
        return parse_config(tomllib.loads(text), path)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: the new text is not valid TOML: {exc}",
                          hint="nothing was written; please report this") from None
    except ConfigError as exc:
        raise ConfigError(exc.message, problems=exc.problems,
                          hint=f"nothing was written to {path}") from None


def new_config_text(plan: ProfilePlan) -> str:
    return HEADER + "\n" + render_profile(plan)


def add_profile_text(existing: str, plan: ProfilePlan, *, replace: bool = False) -> str:
    """`existing` with the plan's profile appended — or, with `replace`, put where the old one
    was. Raises ConfigError when the old profile cannot be cut out cleanly."""
    rendered = render_profile(plan)
    if replace and plan.name in _profiles(existing):
        return _replace_profile(existing, plan.name, rendered)
    text = existing if not existing or existing.endswith("\n") else existing + "\n"
    return text + ("\n" if text.strip() else "") + rendered


def _profiles(text: str) -> Mapping[str, object]:
    try:
        profiles = tomllib.loads(text).get("profiles", {})
    except tomllib.TOMLDecodeError:
        return {}
    return profiles if isinstance(profiles, dict) else {}


def _header_path(line: str) -> tuple[str, ...] | None:
    """The dotted key of a table header line ([a.b] or [[a.b]]), else None."""
    match = re.fullmatch(r"\s*\[\[?([^\[\]]+)\]\]?\s*(?:#.*)?", line.rstrip("\r\n"))
    if match is None:
        return None
    return tuple(part.strip().strip("\"'") for part in match.group(1).split("."))


def _replace_profile(existing: str, name: str, rendered: str) -> str:
    lines = existing.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if _header_path(line) is not None]
    ends = [*starts[1:], len(lines)]
    removed = [(_header_path(lines[i]) or ())[:2] == ("profiles", name) for i in starts]
    kept: list[str] = lines[:starts[0]] if starts else list(lines)
    inserted = False
    for n, (start, end) in enumerate(zip(starts, ends, strict=True)):
        section = lines[start:end]
        if not removed[n]:
            kept += section
            continue
        if not inserted:
            kept.append(rendered)
            inserted = True
        if n + 1 < len(starts) and removed[n + 1]:
            continue
        # the blank lines and comments that lead up to the next table belong to it
        tail = len(section)
        while tail > 1 and (not section[tail - 1].strip()
                            or section[tail - 1].lstrip().startswith("#")):
            tail -= 1
        lead = section[tail:]
        if n + 1 < len(starts) and not any(not line.strip() for line in lead):
            lead = ["\n", *lead]
        kept += lead
    text = "".join(kept)
    before, after = _without_profile(existing, name), _without_profile(text, name)
    if before is None or before != after or _profiles(text).get(name) != _profiles(
            rendered).get(name):
        raise ConfigError(f"cannot replace profile {name!r} automatically: its tables are not "
                          "all of the form [profiles.NAME…]",
                          hint="remove it from the file by hand, or choose another profile name")
    return text


def _without_profile(text: str, name: str) -> dict[str, object] | None:
    """The parsed text minus profile `name`; None when it does not parse."""
    try:
        data = dict(tomllib.loads(text))
    except tomllib.TOMLDecodeError:
        return None
    data["profiles"] = {k: v for k, v in dict(data.get("profiles", {})).items() if k != name}
    return data
