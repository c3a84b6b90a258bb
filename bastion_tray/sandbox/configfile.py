"""A bastion-tray config (DESIGN.md "Configuration") for profile `foo`, aimed at a sandbox.

The writer covers only what such a config holds (tables of str, int, bool and lists of str), so
it needs no TOML library; stdlib tomllib reads it back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bastion_tray.core.configwriter import toml_string

Value = str | int | bool | list[str]
PROFILE = "foo"

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class ConfigTargets:
    """What the config points at; the Sandbox fills it in."""

    region: str
    bastion_name: str
    user: str
    identity_file: Path
    bastion_port: int
    appserver_host: str
    appserver_port: int
    db_host: str
    db_port: int
    db_local_port: int  # the forward's local port: free when chosen, never a fixed 13306


def toml_value(value: Value) -> str:
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(toml_string(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to the sandbox config")


def toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else toml_string(key)


def dump_tables(tables: Mapping[tuple[str, ...], Mapping[str, Value | None]]) -> str:
    """Tables keyed by their dotted path; a None value leaves the key out."""
    chunks = []
    for path, entries in tables.items():
        lines = [f"[{'.'.join(toml_key(p) for p in path)}]"]
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in entries.items() if v is not None]
        chunks.append("\n".join(lines))
    return "\n\n".join(chunks) + "\n"


def write_config(path: Path, targets: ConfigTargets, *, idle_timeout: str | int = "30m",
                 warn_before: str | int = "2m",
                 extra_bastion: Mapping[str, Value | None] | None = None,
                 extra_settings: Mapping[str, Value | None] | None = None,
                 profile: str = PROFILE,
                 extra_host: Mapping[str, Value | None] | None = None) -> Path:
    """Write the config; `extra_*` add or override keys (None removes one, e.g. `name`)."""
    identity = str(targets.identity_file)
    bastion: dict[str, Value | None] = {
        "name": targets.bastion_name, "user": targets.user, "identity_file": identity,
        "host": "auto", "port": targets.bastion_port, **(extra_bastion or {})}
    settings: dict[str, Value | None] = {
        "idle_timeout": idle_timeout, "warn_before": warn_before, **(extra_settings or {})}
    tables: dict[tuple[str, ...], Mapping[str, Value | None]] = {
        ("settings",): settings,
        ("profiles", profile): {"region": targets.region},
        ("profiles", profile, "bastion"): bastion,
        ("profiles", profile, "hosts", "appserver"): {
            "hostname": targets.appserver_host, "port": targets.appserver_port,
            "user": targets.user, "identity_file": identity, **(extra_host or {})},
        ("profiles", profile, "forwards", "db"): {
            "local_port": targets.db_local_port, "remote_host": targets.db_host,
            "remote_port": targets.db_port},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_tables(tables))
    return path
