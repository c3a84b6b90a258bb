"""The names host keys are trusted under, and the fingerprints users type (pure).

Every host key is recorded and looked up under an alias, never an address: ``<profile>-bastion``
for the bastion, ``<profile>-<host>`` for a private host of ``[profiles.P.hosts]``. Private
addresses such as 10.0.0.115 repeat across VPCs, and a bastion without an Elastic IP gets a new
public address at every start, so an address says nothing about which machine answers. The same
alias is the ``Host`` of the generated ``~/.ssh/config`` block and its ``HostKeyAlias``, so the
daemon, ``shell`` and plain OpenSSH all agree on one known_hosts line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BASTION = "bastion"  # the target name that means the profile's bastion, not a private host

_FINGERPRINT_BODY = re.compile(r"[A-Za-z0-9+/]{43}")


def bastion_alias(profile: str) -> str:
    """``foo-bastion``: whatever the instance's Name tag says."""
    return f"{profile}-{BASTION}"


def host_alias(profile: str, host: str) -> str:
    """``foo-appserver`` for ``[profiles.foo.hosts.appserver]``."""
    return f"{profile}-{host}"


def target_alias(profile: str, host: str | None) -> str:
    """The alias of `host` in `profile`; None (or "bastion") is the bastion itself."""
    return bastion_alias(profile) if host in (None, BASTION) else host_alias(profile, str(host))


def normalize_fingerprint(text: str) -> str:
    """``SHA256:…`` as ssh-keygen prints it, from what a user pastes.

    Accepted: with or without the ``SHA256:`` prefix (any case), with the base64 padding ``=``
    that some tools print, surrounded by blanks. Anything else raises ValueError naming the
    expected form, so a typo is never compared (and never "matches nothing" silently).
    """
    value = text.strip()
    if value[:7].lower() == "sha256:":
        value = value[7:]
    value = value.rstrip("=")
    if not _FINGERPRINT_BODY.fullmatch(value):
        shown = text if len(text) <= 60 else text[:57] + "…"
        raise ValueError(f"{shown!r} is not a SHA256 fingerprint: expected SHA256: followed by "
                         "43 base64 characters, as `ssh-keygen -lf` prints it")
    return "SHA256:" + value


def _known_hosts_name(host: str, port: int) -> str:
    """How OpenSSH names an address in known_hosts: ``host`` on port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


@dataclass(frozen=True)
class KeyTarget:
    """A host whose key is checked: the alias it is trusted under, the address it answers at.

    `alias` (``foo-bastion``, ``foo-appserver``) is what known_hosts lines name, as OpenSSH's
    ``HostKeyAlias`` does. The address is used for messages and, for the bastion only, for lines
    that earlier versions (and the user's own ``ssh``) recorded under it.
    """

    alias: str
    host: str
    port: int
    profile: str | None = None
    host_name: str | None = None  # None: the bastion; else the key of [profiles.P.hosts]

    @property
    def address(self) -> str:
        return _known_hosts_name(self.host, self.port)

    @property
    def describe(self) -> str:
        what = "bastion" if self.host_name is None else f"host {self.host_name}"
        where = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return (f"{what} {self.alias} at {where}"
                + (f" (profile {self.profile})" if self.profile else ""))

    @property
    def trust_command(self) -> str:
        profile = self.profile or "PROFILE"
        return f"bastion-tray trust {profile}" + (f" {self.host_name}" if self.host_name else "")


def bastion_target(profile: str, host: str, port: int) -> KeyTarget:
    return KeyTarget(bastion_alias(profile), host, port, profile)


def private_target(profile: str, host_name: str, hostname: str, port: int) -> KeyTarget:
    return KeyTarget(host_alias(profile, host_name), hostname, port, profile, host_name)


def lists_alias(known_hosts_text: str, alias: str) -> bool:
    """Whether a known_hosts text has a usable line for `alias` (plain names, as the app writes
    them; ``@revoked`` and ``@cert-authority`` lines do not count). For a quick look before
    handing a host to OpenSSH, which does the real check."""
    for raw in known_hosts_text.splitlines():
        fields = raw.split()
        if len(fields) < 3 or fields[0].startswith(("#", "@")):
            continue
        if alias in fields[0].split(","):
            return True
    return False


def openssh_options(alias: str, known_hosts: str) -> list[tuple[str, str]]:
    """The options that make OpenSSH check `alias`'s key exactly as the daemon does: from the
    app's known_hosts only, under the alias, never accepting or writing a key by itself."""
    path = f'"{known_hosts}"' if any(c.isspace() for c in known_hosts) else known_hosts
    return [("HostKeyAlias", alias), ("UserKnownHostsFile", path),
            ("StrictHostKeyChecking", "yes"), ("UpdateHostKeys", "no")]
