"""Teams (DESIGN.md "Teams"): the names and formats that several daemons on one bastion share.

Pure: the lease tag (`bastion-tray:lease:<user_id>` = ISO-8601 UTC expiry), the backstop
schedule (`bastion-tray-<instance-id>`, `at(YYYY-MM-DDTHH:MM:SS)` in UTC), and the user id
reduced to what an EC2 tag key may hold. The adapters, the lifecycle and the sandbox (which plays
EventBridge Scheduler) all read and write these through here, so they cannot drift apart.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

TAG_PREFIX = "bastion-tray:"
LEASE_PREFIX = "bastion-tray:lease:"
SCHEDULE_PREFIX = "bastion-tray-"
SCHEDULE_GROUP = "default"
STOP_TARGET_ARN = "arn:aws:scheduler:::aws-sdk:ec2:stopInstances"
#: an EC2 tag key is at most 128 characters; the lease prefix takes 19 of them
USER_ID_MAX = 128 - len(LEASE_PREFIX)
#: what an EC2 tag key may hold: letters, digits, spaces and + - = . _ : / @
_TAG_CHARS = re.compile(r"[^A-Za-z0-9 +\-=._:/@]")
_USER_ID = re.compile(r"[A-Za-z0-9+\-=._:/@]+")
_AT = re.compile(r"at\((\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\)")


def lease_key(user_id: str) -> str:
    return LEASE_PREFIX + user_id


def schedule_name(instance_id: str) -> str:
    return SCHEDULE_PREFIX + instance_id


def iso_utc(epoch: float) -> str:
    """`2026-12-01T22:10:00Z`: whole seconds, rounded up so a lease never ends early."""
    whole = int(-(-epoch // 1))
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso_utc(text: str) -> float | None:
    """Epoch seconds of an ISO-8601 time (a "Z" or an offset; naive means UTC); None if it is
    not one."""
    if not isinstance(text, str) or len(text) > 40:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def at_expression(epoch: float) -> str:
    """EventBridge Scheduler's one-time expression for `epoch`, in UTC, rounded up."""
    whole = int(-(-epoch // 1))
    return "at(" + datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S") + ")"


def parse_at_expression(expression: str, timezone: str | None = "UTC") -> float | None:
    """Epoch seconds of `at(…)` (read in UTC: the only zone we write); None if it is not one."""
    match = _AT.fullmatch(expression.strip()) if isinstance(expression, str) else None
    if match is None or (timezone not in (None, "", "UTC", "Etc/UTC")):
        return None
    try:
        return datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def stop_input(instance_id: str) -> str:
    """The schedule target's input: StopInstances of that instance only."""
    return json.dumps({"InstanceIds": [instance_id]})


def reduce_user_id(raw: str) -> str:
    """`raw` with every character an EC2 tag key cannot hold replaced by '-', spaces too (a
    user id is one word), cut to USER_ID_MAX; "user" if nothing is left."""
    reduced = _TAG_CHARS.sub("-", raw.strip()).replace(" ", "-").strip("-")
    return reduced[:USER_ID_MAX] or "user"


def default_user_id() -> str:
    """`$USER@hostname` (the short host name), reduced to the tag charset."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no $USER (a bare container)
        user = "user"
    host = socket.gethostname().split(".")[0] or "localhost"
    return reduce_user_id(f"{user}@{host}")


def user_id_problem(value: str) -> str | None:
    """Why `value` cannot be a user id, or None when it can."""
    if not _USER_ID.fullmatch(value):
        return ("expected letters, digits and + - = . _ : / @ only (it becomes part of an EC2 "
                f"tag key), got {value[:60]!r}")
    if len(value) > USER_ID_MAX:
        return f"expected at most {USER_ID_MAX} characters, got {len(value)}"
    return None


@dataclass(frozen=True)
class Lease:
    user_id: str
    until: float | None  # None: the tag's value is not an ISO time (ignored as expired)

    def live(self, now: float) -> bool:
        return self.until is not None and self.until > now


def leases_from(tags: tuple[tuple[str, str], ...]) -> tuple[Lease, ...]:
    """Every lease among `(user_id, value)` pairs as InstanceInfo.leases holds them."""
    return tuple(Lease(user, parse_iso_utc(value)) for user, value in tags)


def in_use_text(users: tuple[str, ...] | list[str], sessions: int) -> str:
    """"in use by bob@laptop-b (2 SSH connections)", "in use by 1 other SSH session"."""
    conns = f"{sessions} SSH connection{'s' if sessions != 1 else ''}"
    if users:
        return f"in use by {', '.join(users)}" + (f" ({conns})" if sessions else "")
    return f"in use by {sessions} other SSH session{'s' if sessions != 1 else ''}"
