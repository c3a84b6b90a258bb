"""Typed reads from a TOML table that record problems instead of raising on the first one.

Every problem says where: `<file>: [profiles.foo.bastion] port: expected …, got …`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from bastion_tray.core.durations import MAX_CONFIG_DURATION, format_duration, parse_duration
from bastion_tray.core.errors import ConfigError
from bastion_tray.core.text import clip, clip_repr

_INSTANCE_ID = re.compile(r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}=?")
_GROUP_ID = re.compile(r"sg-[0-9a-f]{8,17}")
_GROUP_NAME = re.compile(r"[\w .:/()#,@\[\]+=&;{}!$*-]{1,255}")


class Problems:
    """Every problem of one file, in the order found."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []

    def add(self, table: str, key: str, what: str) -> None:
        # a table or key name is the user's too: each part cut (a 1-MB profile name), then all
        table = clip(".".join(clip(part) for part in table.split(".")), 200) if table else ""
        key = clip(key)
        where = f"[{table}] {key}" if table else key
        self.items.append(f"{where}: {what}")

    def raise_if_any(self) -> None:
        if not self.items:
            return
        count = len(self.items)
        where = clip(str(self.path), 300)
        head = f"{where}: {count} problem{'s' if count > 1 else ''} in the configuration"
        raise ConfigError(head + "\n" + "\n".join(f"  - {p}" for p in self.items),
                          problems=[f"{where}: {p}" for p in self.items])


def _type_name(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


class TableReader:
    """Reads keys of one table; remembers which were read so leftovers can be reported."""

    def __init__(self, data: Mapping[str, object] | None, name: str, problems: Problems) -> None:
        self.data: Mapping[str, object] = data or {}
        self.present = data is not None
        self.name = name
        self.problems = problems
        self._known: set[str] = set()

    def problem(self, key: str, what: str) -> None:
        self.problems.add(self.name, key, what)

    def _get(self, key: str, required: bool) -> object | None:
        self._known.add(key)
        if key not in self.data:
            if required and self.present:
                self.problem(key, "missing; this key is required")
            return None
        return self.data[key]

    def names(self) -> list[str]:
        return list(self.data)

    def table(self, key: str, *, required: bool = False) -> TableReader:
        value = self._get(key, required)
        child = f"{self.name}.{key}" if self.name else key
        if value is not None and not isinstance(value, dict):
            self.problem(key, f"expected a table [{child}], got {_type_name(value)}")
            value = None
        return TableReader(value if isinstance(value, dict) else None, child, self.problems)

    def text(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self._get(key, required)
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            self.problem(key, "expected a non-empty string, got "
                         f"{_type_name(value)} {clip_repr(value)}")
            return default
        return value.strip()

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(key, f"expected true or false, got {_type_name(value)} {clip_repr(value)}")
            return default
        return value

    def port(self, key: str, default: int | None) -> int:
        """A port; `default` None makes the key required (0 stands in when it is missing)."""
        value = self._get(key, default is None)
        if value is None:
            return default or 0
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            self.problem(key, f"expected a port number 1–65535, got {clip_repr(value)}")
            return default or 0
        return value

    def duration(self, key: str, default: float, *, minimum: float = 0,
                 maximum: float = MAX_CONFIG_DURATION) -> float:
        """Seconds, minimum ≤ s ≤ maximum; a NaN, an infinity, a negative or too long a value is
        a problem that names the key and the limit."""
        value = self._get(key, False)
        if value is None:
            return default
        try:
            seconds = parse_duration(value, maximum=maximum)
        except ValueError as exc:
            self.problem(key, str(exc))
            return default
        if seconds < minimum:
            self.problem(key, f"expected at least {format_duration(minimum)} "
                         f"(and at most {format_duration(maximum)}), got {clip_repr(value)}")
            return default
        return seconds

    def str_list(self, key: str) -> list[str] | None:
        value = self._get(key, False)
        if value is None:
            return None
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, str) and v for v in value)):
            self.problem(key, f"expected a non-empty array of strings such as "
                         f"[\"x-terminal-emulator\", \"-e\"], got {clip_repr(value)}")
            return None
        return list(value)

    def path(self, key: str) -> Path | None:
        value = self.text(key)
        if value is None:
            return None
        path = Path(os.path.expandvars(value)).expanduser()
        try:
            exists = path.is_file()
        except OSError as exc:  # a name too long for the file system, say
            self.problem(key, f"expected a readable key file, but {clip(str(path))} cannot be "
                         f"looked at: {exc.strerror}")
            return path
        if not exists:
            self.problem(key, f"expected a readable key file, but {clip(str(path))} does not "
                         "exist")
        return path

    def instance_id(self, key: str) -> str | None:
        value = self.text(key)
        if value is not None and not _INSTANCE_ID.fullmatch(value):
            self.problem(key, "expected an EC2 instance id like \"i-0123456789abcdef0\" "
                         f"(i- and 8 or 17 hex digits), got {clip_repr(value)}")
            return None
        return value

    def fingerprint(self, key: str) -> str | None:
        value = self.text(key)
        if value is not None and not _FINGERPRINT.fullmatch(value):
            self.problem(key, "expected a host-key fingerprint like \"SHA256:…\" as "
                         f"`ssh-keygen -lf` prints it, got {clip_repr(value)}")
            return None
        return value

    def check_name(self, name: str) -> None:
        if not _NAME.fullmatch(name):
            self.problems.add(self.name, "", f"the name {clip_repr(name)} must be letters, digits, "
                              "'-', '_' or '.' (it becomes an ssh Host name)")

    def reject_unknown(self) -> None:
        for key in self.data:
            if key in self._known:
                continue
            import difflib  # only for a typo: it is a millisecond of every command's start

            close = difflib.get_close_matches(key, sorted(self._known), n=1, cutoff=0.6)
            hint = f" — did you mean {close[0]!r}?" if close else ""
            expected = ", ".join(sorted(self._known)) or "no keys"
            self.problem(key, f"unknown key{hint} (expected one of: {expected})")

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        """One of `choices`; anything else is a problem that lists them."""
        value = self.text(key)
        if value is None:
            return default
        if value not in choices:
            self.problem(key, f"expected one of {', '.join(repr(c) for c in choices)}, "
                         f"got {clip_repr(value)}")
            return default
        return value

    def security_group(self, key: str) -> str | None:
        """A security group id ("sg-…") or a group name."""
        value = self.text(key)
        if value is not None and not (_GROUP_ID.fullmatch(value) or (
                not value.startswith("sg-") and _GROUP_NAME.fullmatch(value))):
            self.problem(key, "expected a security group id like \"sg-0123456789abcdef0\" "
                         f"or a group name, got {clip_repr(value)}")
            return None
        return value
