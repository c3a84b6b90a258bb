"""Fresh ed25519 keys per sandbox (ssh-keygen) and the lines that name them."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KeyPair:
    private: Path  # unencrypted OpenSSH private key, mode 0600
    public_line: str  # "ssh-ed25519 AAAA…", without comment


def generate_ed25519(path: Path, keygen: str, comment: str) -> KeyPair:
    """Create `path` and `path.pub`; never reuse keys, so no test trusts a stale host key."""
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    os.chmod(path, 0o600)
    kind, blob = path.with_name(path.name + ".pub").read_text().split()[:2]
    return KeyPair(path, f"{kind} {blob}")


def fingerprint(public_line: str) -> str:
    """OpenSSH's "SHA256:…" form, as `host_key` in the config expects."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def known_hosts_line(host: str, port: int, public_line: str) -> str:
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {public_line}"
