"""Host-key verification for the bastion and private hosts: never trust on first use, never
replace silently.

Keys come from three places, checked in this order:

1. the profile's ``host_key`` pin (a ``SHA256:…`` fingerprint). When set it alone decides.
2. the app's own known_hosts (``AppPaths.known_hosts``): read and written, but written only by
   `HostKeyStore.record`, which ``bastion-tray trust`` calls after the user confirmed — or
   which `verify` calls on first contact (nothing known for the host at all) when the
   instance's console output lists the presented key (the store's `vouch`; a key it does not
   list is refused).
3. the user's ``~/.ssh/known_hosts``: read only, hashed (``|1|…``) and wildcard entries included.

Entries are keyed by the host's alias (``foo-bastion``, ``foo-appserver``; core/trust.py), as
OpenSSH keys them under ``HostKeyAlias``, so a bastion without an Elastic IP keeps its trusted
key across new public addresses and 10.0.0.115 in one VPC is not 10.0.0.115 in another. Lines
under the address (``host`` on port 22, ``[host]:port`` otherwise: earlier versions, the user's
own ``ssh``) count only while no line names the alias.

We drive `paramiko.Transport` ourselves rather than `SSHClient`, so instead of a
`MissingHostKeyPolicy` the check runs right after key exchange (`negotiate`) and before any
authentication: an unknown or changed key fails before a signature or a username is sent.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from bastion_tray.adapters.readiness import hostport, open_tcp
from bastion_tray.core.console_keys import MISMATCH, ConsoleVerdict
from bastion_tray.core.errors import HostKeyError, SSHError
from bastion_tray.core.paths import ensure_private_dir
from bastion_tray.core.trust import KeyTarget

log = logging.getLogger(__name__)

#: asked on first contact (nothing known for the host) what the console output says of a
#: presented ``SHA256:…`` fingerprint (adapters/console.py)
Vouch = Callable[[KeyTarget, str], ConsoleVerdict]

#: the host-key algorithms paramiko negotiates for each key type found in a known_hosts file
_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256")}


def fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:…`` exactly as ``ssh-keygen -lf`` prints it (unpadded base64 of the blob hash)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """How OpenSSH names the host in known_hosts: ``host`` on port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


@dataclass(frozen=True)
class KnownKey:
    """One key a store knows for the host being checked."""

    key_type: str  # "ssh-ed25519", "ssh-rsa", … (None-typed pins use "")
    fingerprint: str
    path: Path | None  # None: the config's host_key pin
    line: int = 0
    revoked: bool = False  # an OpenSSH "@revoked" line
    blob: bytes = b""

    @property
    def where(self) -> str:
        return "host_key in the config" if self.path is None else f"{self.path}:{self.line}"


@dataclass(frozen=True)
class HostKeyCheck:
    """What the stores say about a presented key: status is trusted, unknown, changed or revoked."""

    status: str
    fingerprint: str
    key_type: str
    matched: KnownKey | None = None  # the entry that vouches for it (trusted)
    conflicts: tuple[KnownKey, ...] = ()  # same-type keys that differ (changed), or the revocation
    others: tuple[KnownKey, ...] = ()  # keys of other types known for this host
    name: str = ""  # the known_hosts name the entries were found under (alias or address)

    @property
    def trusted(self) -> bool:
        return self.status == "trusted"


def _glob(pattern: str) -> re.Pattern[str]:
    """OpenSSH wildcards are only ``*`` and ``?``: ``[host]:port`` brackets are literal."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
    return re.compile("".join(parts))


def _host_matches(patterns: str, name: str) -> bool:
    """OpenSSH's matching: comma-separated patterns, ``|1|`` hashes, ``*``/``?``, ``!`` negation."""
    matched = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        pattern = pattern[1:] if negated else pattern
        if pattern.startswith("|1|"):
            try:
                hit = paramiko.HostKeys.hash_host(name, pattern) == pattern
            except (ValueError, AssertionError, IndexError):
                hit = False
        else:
            hit = _glob(pattern).fullmatch(name.lower()) is not None
        if hit and negated:
            return False
        matched = matched or hit
    return matched


def read_known_hosts(path: Path, name: str) -> list[KnownKey]:
    """Every key `path` holds for `name` (a missing file holds none; bad lines are skipped)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("cannot read %s: %s; ignoring it", path, exc.strerror)
        return []
    found = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        revoked = fields[0] == "@revoked"
        if fields[0].startswith("@"):
            if not revoked:  # @cert-authority: host certificates are not supported
                continue
            fields = fields[1:]
        if len(fields) < 3 or not _host_matches(fields[0], name):
            continue
        try:
            key = paramiko.PKey.from_type_string(fields[1], base64.b64decode(fields[2]))
        except Exception:  # one odd line must not hide the others
            log.debug("%s:%d: unusable %s key line; skipped", path, lineno, fields[1])
            continue
        found.append(KnownKey(key.get_name(), fingerprint(key), path, lineno, revoked,
                              key.asbytes()))
    return found


class HostKeyStore:
    """Trusted host keys: config pin, app known_hosts, user known_hosts (read only).

    Lines under the target's alias decide when there are any. For the bastion only, when neither
    file names its alias, lines under its address count (what versions before aliases recorded,
    what a user's own ``ssh`` wrote): they vouch for the very key they hold and flag a different
    one, but the app never writes an address line again. A private host is known by alias only.
    """

    def __init__(self, app_known_hosts: Path, *, pin: str | None = None,
                 user_known_hosts: Path | None = None, vouch: Vouch | None = None) -> None:
        self.app_known_hosts = app_known_hosts
        self.vouch = vouch  # None: an unknown key fails at once (the trust hint)
        #: None → ~/.ssh/known_hosts; tests pass a path of their own
        self.user_known_hosts = (user_known_hosts if user_known_hosts is not None
                                 else Path.home() / ".ssh" / "known_hosts")
        self.pin = pin

    def _read(self, name: str) -> list[KnownKey]:
        return (read_known_hosts(self.app_known_hosts, name)
                + read_known_hosts(self.user_known_hosts, name))

    def known(self, target: KeyTarget, *, legacy: bool = True) -> tuple[str, list[KnownKey]]:
        """The name that decides for `target` and its entries: the alias's, else (`legacy`, the
        bastion only: private addresses repeat across VPCs) the address's."""
        entries = self._read(target.alias)
        if entries or not legacy or target.host_name is not None:
            return target.alias, entries
        return target.address, self._read(target.address)

    def check(self, target: KeyTarget, key: paramiko.PKey, *,
              legacy: bool = True) -> HostKeyCheck:
        """Classify `key` presented by `target`; never raises, never writes. Without `legacy`
        only the alias's lines count (what OpenSSH with HostKeyAlias sees)."""
        fp, key_type, blob = fingerprint(key), key.get_name(), key.asbytes()
        if self.pin is not None and target.host_name is None:
            pin = KnownKey("", self.pin, None)
            if pin.fingerprint == fp:
                return HostKeyCheck("trusted", fp, key_type, matched=pin)
            return HostKeyCheck("changed", fp, key_type, conflicts=(pin,))
        name, entries = self.known(target, legacy=legacy)
        revoked = tuple(e for e in entries if e.revoked and e.blob == blob)
        if revoked:
            return HostKeyCheck("revoked", fp, key_type, conflicts=revoked, name=name)
        valid = [e for e in entries if not e.revoked]
        for entry in valid:
            if entry.blob == blob:
                return HostKeyCheck("trusted", fp, key_type, matched=entry, name=name)
        same = tuple(e for e in valid if e.key_type == key_type)
        others = tuple(e for e in valid if e.key_type != key_type)
        return HostKeyCheck("changed" if same else "unknown", fp, key_type,
                            conflicts=same, others=others, name=name)

    def verify(self, target: KeyTarget, key: paramiko.PKey) -> HostKeyCheck:
        """`check`, raising HostKeyError unless the key is trusted (or, on first contact,
        listed in the instance's console output: then recorded under the alias)."""
        result = self.check(target, key)
        if result.status == "unknown" and self.vouch is not None and not self.known(target)[1]:
            return self._first_contact(target, key, result)
        if not result.trusted:
            raise host_key_error(result, target)
        log.debug("[profile=%s host=%s] host key %s trusted via %s", target.profile,
                  target.alias, result.fingerprint, result.matched and result.matched.where)
        return result

    def _first_contact(self, target: KeyTarget, key: paramiko.PKey,
                       result: HostKeyCheck) -> HostKeyCheck:
        """Nothing is known for `target` at all (a changed key never gets here): the console
        output decides, or the unknown-key error says why it could not."""
        assert self.vouch is not None
        verdict = self.vouch(target, result.fingerprint)
        if verdict.outcome == MISMATCH:
            raise console_mismatch_error(result, target, verdict)
        if not verdict.verified:
            raise host_key_error(result, target, why=verdict.reason)
        path = self.record(target, key)
        log.info("[profile=%s host=%s] host key %s of %s verified from the instance's console "
                 "output (instance %s)", target.profile, target.alias, result.fingerprint,
                 target.alias, verdict.instance_id or "?")
        return HostKeyCheck("trusted", result.fingerprint, result.key_type, name=target.alias,
                            matched=KnownKey(result.key_type, result.fingerprint, path,
                                             blob=key.asbytes()))

    def preferred_key_types(self, target: KeyTarget,
                            default: tuple[str, ...]) -> tuple[str, ...]:
        """`default` reordered so the types we know a key of come first, as OpenSSH does.

        Without this a server with several host keys would show its ed25519 key although the
        user's known_hosts vouches for its ecdsa one. Nothing is removed from `default`.
        """
        if self.pin is not None and target.host_name is None:
            return default
        known: list[str] = []
        for entry in self.known(target)[1]:
            for algorithm in _ALGORITHMS.get(entry.key_type, (entry.key_type,)):
                if algorithm in default and algorithm not in known:
                    known.append(algorithm)
        return tuple(known) + tuple(a for a in default if a not in known)

    def record(self, target: KeyTarget, key: paramiko.PKey) -> Path:
        """Append `key` under `target.alias` to the app's known_hosts (dir 0700, file 0600).

        Called by ``bastion-tray trust`` after the user confirmed the fingerprint, and on first
        contact for a key the instance's console output lists (`verify`). A key
        that conflicts with one already known under the alias is refused: the old line must be
        removed by hand after verifying, so a changed key is never replaced silently.
        """
        result = HostKeyStore(self.app_known_hosts, user_known_hosts=self.user_known_hosts
                              ).check(target, key, legacy=False)  # never the pin
        if result.trusted and result.matched and result.matched.path == self.app_known_hosts:
            return self.app_known_hosts
        if result.status in ("changed", "revoked"):
            raise host_key_error(result, target)
        ensure_private_dir(self.app_known_hosts.parent)
        line = f"{target.alias} {key.get_name()} {key.get_base64()}\n"
        fd = os.open(self.app_known_hosts, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            if os.name != "nt":
                os.fchmod(handle.fileno(), 0o600)
            handle.write(line)
        log.info("[profile=%s host=%s] recorded host key %s in %s", target.profile,
                 target.alias, result.fingerprint, self.app_known_hosts)
        return self.app_known_hosts


def host_key_error(result: HostKeyCheck, target: KeyTarget, *,
                   why: str | None = None) -> HostKeyError:
    """The HostKeyError for a check that did not pass, with the way out in its hint; `why`:
    why the console output could not vouch for an unknown key."""
    where, trust, fp = target.describe, target.trust_command, result.fingerprint
    if result.status == "unknown":
        extra = ""
        if result.others:
            kinds = ", ".join(sorted({e.key_type for e in result.others}))
            extra = f" ({result.key_type}; only {kinds} keys are known for it)"
        if why:
            extra += f"; not verified from the console output: {why}"
        return HostKeyError(f"unknown host key for {where}: {fp}{extra}", fingerprint=fp,
                            hint=f"verify it, then run: {trust}")
    old = result.conflicts[0]
    if result.status == "revoked":
        return HostKeyError(
            f"the host key of {where} is REVOKED ({old.where}): {fp}. Refusing to connect.",
            fingerprint=fp, hint="ask whoever runs the host why its key was revoked")
    known = "\n".join(f"  known:     {e.fingerprint}{' ' + e.key_type if e.key_type else ''} "
                      f"({e.where})" for e in result.conflicts)
    message = (
        f"HOST KEY CHANGED for {where}!\n{known}\n"
        f"  presented: {fp} {result.key_type}\n"
        "This could be an attack (someone intercepting the connection), or the machine was "
        "rebuilt or replaced and has a new host key. No credentials were sent, nothing was changed."
    )
    if old.path is None:
        hint = ("verify the new fingerprint (e.g. in the instance's console output), then "
                "update host_key in the config")
    else:
        name = result.name or target.alias
        hint = (f"verify the new fingerprint (e.g. in the instance's console output), then remove "
                f"line {old.line} from {old.path} (ssh-keygen -R '{name}' -f {old.path}) "
                f"and run: {trust}")
    return HostKeyError(message, fingerprint=fp, hint=hint)


def console_mismatch_error(result: HostKeyCheck, target: KeyTarget,
                           verdict: ConsoleVerdict) -> HostKeyError:
    """The key presented on first contact is not among those the console output lists."""
    fp, listed = result.fingerprint, ", ".join(sorted(verdict.listed))
    instance = f" (instance {verdict.instance_id})" if verdict.instance_id else ""
    message = (
        f"HOST KEY NOT IN THE CONSOLE OUTPUT for {target.describe}!\n"
        f"  console:   {listed}{instance}\n  presented: {fp} {result.key_type}\n"
        "This could be an attack (someone intercepting the connection). No credentials were "
        "sent, nothing was recorded.")
    command = (f"aws ec2 get-console-output --instance-id {verdict.instance_id} --latest "
               "--output text" if verdict.instance_id else "aws ec2 get-console-output")
    return HostKeyError(message, fingerprint=fp, hint=(
        f"compare with the console output yourself ({command}); if the instance's host keys "
        "were replaced after its first boot, verify the presented key another way, then run: "
        f"{target.trust_command} --fingerprint {fp}"))


def negotiate(transport: paramiko.Transport, host: str, port: int, *,
              timeout: float, what: str = "the bastion") -> paramiko.PKey:
    """Run key exchange on `transport` and return the server's host key (SSHError on failure)."""
    transport.banner_timeout = timeout
    transport.handshake_timeout = timeout
    try:
        transport.start_client(timeout=timeout)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        transport.close()
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            detail = "timed out"
        raise SSHError(
            f"SSH handshake with {what} at {hostport(host, port)} failed: {detail}",
            hint="the port answers but not as a working SSH server: check host and port in the "
                 "config, or wait a moment if the instance is still booting",
        ) from None
    if not transport.is_active():
        raise SSHError(f"SSH handshake with {what} at {hostport(host, port)} timed out "
                       f"after {timeout:g} s")
    return transport.get_remote_server_key()


def fetch_host_key(host: str, port: int, timeout: float = 15.0, *,
                   key_types: tuple[str, ...] | None = None,
                   via: Any = None, what: str = "the bastion") -> paramiko.PKey:
    """Key exchange only, then hang up: the server's host key, for ``bastion-tray trust``.

    `via` is a stream already open to the server — a ``direct-tcpip`` channel through the
    bastion, for a private host — instead of a TCP connection of our own. Nothing is
    authenticated and nothing is trusted here; the caller shows `fingerprint()` of the result
    to the user before it calls `HostKeyStore.record`.
    """
    sock = via if via is not None else open_tcp(host, port, timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        if key_types:
            transport.get_security_options().key_types = key_types
        return negotiate(transport, host, port, timeout=timeout, what=what)
    finally:
        transport.close()
        sock.close()
