"""Host-key fingerprints from an EC2 instance's console output, and what they say of a key (pure).

At an instance's first boot cloud-init prints its new SSH host keys to the serial console, which
EC2 keeps and hands out through GetConsoleOutput — a channel the network in between cannot
touch. Amazon Linux prints (each line prefixed, ``ec2: `` or ``<14>Jan  4 10:00:01 ec2: ``)::

    -----BEGIN SSH HOST KEY FINGERPRINTS-----
    256 SHA256:l9TqvN0tO2U5u4YPf1A6m8GmZ0Uq2mQ0b6vK6bLx8bE root@ip-10-0-0-5 (ECDSA)
    256 SHA256:2nNy1k9wqjKQF7kqCkGvW2Xk3hY1m0q6wYQ0mY5wY8k root@ip-10-0-0-5 (ED25519)
    -----END SSH HOST KEY FINGERPRINTS-----
    -----BEGIN SSH HOST KEY KEYS-----
    ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA… root@ip-10-0-0-5
    -----END SSH HOST KEY KEYS-----

`console_fingerprints` finds those blocks whatever precedes their lines (a kernel timestamp,
``cloud-init[1234]: ``, a syslog tag), CRs and junk included; `judge` decides whether the
fingerprint a host presents is one of them, and says why.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

FINGERPRINTS, KEYS = "FINGERPRINTS", "KEYS"
_MARKER = re.compile(r"-----(BEGIN|END) SSH HOST KEY (FINGERPRINTS|KEYS)-----")
#: SHA256 only: the MD5 colon-hex form that old cloud-init printed cannot be compared with the
#: SHA256 fingerprint of the key a host presents
_SHA256 = re.compile(r"(?<![A-Za-z0-9+/])SHA256:([A-Za-z0-9+/]{43})=?(?![A-Za-z0-9+/])")
_PUBLIC_KEY = re.compile(
    r"(?<![\w-])((?:ssh|ecdsa|sk-ssh|sk-ecdsa)-[\w@.-]+)\s+(AAAA[A-Za-z0-9+/]+={0,2})")

VERIFIED, MISMATCH, UNAVAILABLE = "verified", "mismatch", "unavailable"


def key_fingerprint(key_type: str, blob_b64: str) -> str | None:
    """``SHA256:…`` of a public key line's base64 blob; None when the blob is not a key of
    `key_type` (truncated, or a base64 word that merely looks like one)."""
    try:
        blob = base64.b64decode(blob_b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    name = key_type.encode("ascii", "replace")
    if blob[:4] != len(name).to_bytes(4, "big") or blob[4:4 + len(name)] != name:
        return None  # an SSH key blob begins with its own type, length-prefixed
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _fingerprints_in(kind: str, lines: list[str]) -> set[str]:
    found: set[str] = set()
    for line in lines:
        if kind == FINGERPRINTS:
            found.update("SHA256:" + m.group(1) for m in _SHA256.finditer(line))
        else:
            for m in _PUBLIC_KEY.finditer(line):
                fp = key_fingerprint(m.group(1), m.group(2))
                if fp is not None:
                    found.add(fp)
    return found


def _blocks(text: str) -> list[tuple[str, set[str]]]:
    """Every complete block in order, as (FINGERPRINTS | KEYS, the fingerprints it names).

    A block cut short (output truncated, a boot still printing) counts as no block: a BEGIN
    restarts collecting, and an END without its BEGIN is ignored."""
    blocks: list[tuple[str, set[str]]] = []
    open_kind: str | None = None
    lines: list[str] = []
    for raw in text.replace("\r", "\n").split("\n"):
        marker = _MARKER.search(raw)
        if marker is None:
            if open_kind is not None:
                lines.append(raw)
            continue
        edge, kind = marker.groups()
        if edge == "BEGIN":
            open_kind, lines = kind, []
        elif open_kind == kind:
            blocks.append((kind, _fingerprints_in(kind, lines)))
            open_kind, lines = None, []
        else:
            open_kind, lines = None, []
    return blocks


def console_fingerprints(text: str | None) -> frozenset[str] | None:
    """The host-key fingerprints the console output vouches for, normalized ``SHA256:…``.

    None when it holds no complete block. When it holds several boots, the last one's: the
    last block, together with the FINGERPRINTS block right before it when the last is a KEYS
    block (cloud-init prints FINGERPRINTS, then KEYS). An empty set: a block that lists no
    SHA256 fingerprint.
    """
    blocks = _blocks(text or "")
    if not blocks:
        return None
    kind, found = blocks[-1]
    if kind == KEYS and len(blocks) > 1 and blocks[-2][0] == FINGERPRINTS:
        found = found | blocks[-2][1]
    return frozenset(found)


@dataclass(frozen=True)
class ConsoleVerdict:
    """What the console output says of a presented key, and why (for the log and the error).

    outcome: VERIFIED (the key is listed), MISMATCH (a block lists other keys: refuse) or
    UNAVAILABLE (nothing to go on: no block, no permission, an error; fall back to `trust`).
    """

    outcome: str
    reason: str
    listed: frozenset[str] = frozenset()
    instance_id: str | None = None

    @property
    def verified(self) -> bool:
        return self.outcome == VERIFIED


def judge(presented: str, listed: frozenset[str] | None, *,
          instance_id: str | None = None) -> ConsoleVerdict:
    """Whether `presented` (``SHA256:…``) is among the console output's `listed` fingerprints
    (None: the output held no block)."""
    what = f"instance {instance_id}" if instance_id else "the instance"
    if listed is None:
        return ConsoleVerdict(UNAVAILABLE, f"the console output of {what} holds no SSH host key "
                              "fingerprints (they are printed at its first boot)",
                              instance_id=instance_id)
    if not listed:
        return ConsoleVerdict(UNAVAILABLE, f"the console output of {what} lists no SHA256 "
                              "host key fingerprint", instance_id=instance_id)
    if presented in listed:
        return ConsoleVerdict(VERIFIED, f"{presented} is listed in the console output of {what}",
                              listed, instance_id)
    return ConsoleVerdict(MISMATCH, f"{presented} is not among the {len(listed)} host key "
                          f"fingerprint{'s' if len(listed) != 1 else ''} in the console output "
                          f"of {what}", listed, instance_id)


def unavailable(reason: str, instance_id: str | None = None) -> ConsoleVerdict:
    """The verdict when the console output could not be read (`reason` says why)."""
    return ConsoleVerdict(UNAVAILABLE, reason, instance_id=instance_id)
