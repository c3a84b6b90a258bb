"""EC2 Instance Connect: a fresh Ed25519 key in memory, its public half pushed to an instance.

DESIGN.md "Access": with ``identity = "ec2-instance-connect"`` there is no key file. For each
connection a key is generated here (cryptography), never written anywhere, and its public half
is pushed with ec2-instance-connect SendSSHPublicKey; the instance's sshd accepts it for 60 s
(AWS's AuthorizedKeysCommand, or the sandbox's), so it is used at once. The session, retries
and timeouts are those of every other AWS call (cloud.AwsHandle); the endpoint comes from
boto3's chain (AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT in the sandbox).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion_tray.adapters.agent import PrivateAgent
from bastion_tray.adapters.cloud import AwsHandle
from bastion_tray.adapters.cloud_errors import translate, where
from bastion_tray.core.errors import BastionTrayError, CloudError

log = logging.getLogger(__name__)

ACTION = "SendSSHPublicKey"
PERMISSION = "ec2-instance-connect:SendSSHPublicKey"
ENDPOINT_ENV = "AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT"
#: how long AWS keeps a pushed key valid on the instance
KEY_VALIDITY = 60.0
#: a key pushed this recently is still used for another connection of the same link (its ssh
#: master, started right after): well inside KEY_VALIDITY, even with a slow sshd
REUSE_WITHIN = 20.0
DENIED = frozenset({"AccessDeniedException", "AccessDenied", "AuthException",
                    "UnauthorizedOperation"})
NOT_FOUND = frozenset({"EC2InstanceNotFoundException"})
NOT_RUNNING = frozenset({"EC2InstanceStateInvalidException"})
UNAVAILABLE = frozenset({"EC2InstanceUnavailableException", "ServiceException"})


def new_key() -> paramiko.Ed25519Key:
    """A fresh Ed25519 key, in memory only (OpenSSH's private format, read back by paramiko)."""
    private = Ed25519PrivateKey.generate()
    text = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption()).decode("ascii")
    try:
        return paramiko.Ed25519Key.from_private_key(io.StringIO(text))
    finally:
        del text, private


def public_line(key: paramiko.PKey) -> str:
    """``ssh-ed25519 AAAA…``: what SendSSHPublicKey takes (and authorized_keys holds)."""
    return f"{key.get_name()} {key.get_base64()}"


@dataclass(frozen=True)
class PushedKey:
    """A key whose public half the instance accepts for `user` until about `valid_until`."""

    key: paramiko.Ed25519Key
    instance_id: str
    user: str
    pushed_at: float  # time.monotonic() when AWS confirmed the push

    @property
    def age(self) -> float:
        return time.monotonic() - self.pushed_at


class InstanceConnect(AwsHandle):
    """SendSSHPublicKey for one profile's account and region. Thread-safe; a handle."""

    SERVICE, LABEL = "ec2-instance-connect", "EC2 Instance Connect"

    def push(self, instance_id: str, user: str, key: paramiko.PKey, what: str = "") -> None:
        """Push `key`'s public half for `user` on `instance_id`; a CloudError saying what to
        do when AWS refuses. `what` names the instance in messages ("the bastion")."""
        label = f"{what} {instance_id}".strip() if what else instance_id
        started = time.monotonic()
        try:
            reply = self._service_client().send_ssh_public_key(
                InstanceId=instance_id, InstanceOSUser=user, SSHPublicKey=public_line(key))
        except ClientError as exc:
            raise self._refused(exc, instance_id, user, label) from None
        except (BotoConnectionError, HTTPClientError) as exc:
            endpoint = self._endpoint_or_default()
            raise CloudError(f"cannot reach the EC2 Instance Connect API at {endpoint} to push "
                             f"a key for {label}: {exc}",
                             hint=f"check the network/VPN and the region "
                                  f"({self.profile.region}); {ENDPOINT_ENV} or "
                                  "AWS_ENDPOINT_URL, when set, choose the endpoint") from None
        except BotoCoreError as exc:  # credentials: the same words as every other AWS call
            raise translate(exc, ACTION, self.profile, instance_id=instance_id,
                            uses_sso=self._uses_sso()) from None
        if reply.get("Success") is False:
            raise CloudError(f"EC2 Instance Connect did not take the key for {label} "
                             f"(RequestId {reply.get('RequestId', '?')})", hint="try again")
        log.info("[profile=%s instance=%s] pushed an ec2-instance-connect key for %s in %.2f s",
                 self.profile.name, instance_id, user, time.monotonic() - started)

    def fresh_key(self, instance_id: str, user: str, what: str = "") -> PushedKey:
        """A new key, pushed: usable for about KEY_VALIDITY seconds from now."""
        key = new_key()
        self.push(instance_id, user, key, what)
        return PushedKey(key, instance_id, user, time.monotonic())

    def _endpoint_or_default(self) -> str:
        try:
            return str(self._service_client().meta.endpoint_url)
        except Exception:  # only for a message
            return f"ec2-instance-connect.{self.profile.region}.amazonaws.com"

    def _refused(self, exc: ClientError, instance_id: str, user: str, label: str) -> CloudError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        said = str(error.get("Message", "")).strip().splitlines()
        aws = said[0][:300] if said else code
        here = where(self.profile)
        if code in DENIED:
            return CloudError(f"{PERMISSION} is not allowed for {label} in {here}: {aws}",
                              hint=f'add "{PERMISSION}" on this instance to the IAM policy of '
                                   "these credentials (the README's IAM section), or use "
                                   "identity_file instead of identity = "
                                   '"ec2-instance-connect"')
        if code in NOT_FOUND:
            return CloudError(f"EC2 Instance Connect cannot find instance {label} in {here}: "
                              f"{aws}", hint="check the instance_id (and the profile's region)")
        if code in NOT_RUNNING:
            return CloudError(f"EC2 Instance Connect cannot push a key to {label}: the instance "
                              f"is not running ({aws})",
                              hint="start it first (bastion-tray starts the bastion itself; a "
                                   "private host must be running)")
        if code in UNAVAILABLE:
            return CloudError(f"EC2 Instance Connect is unavailable for {label} right now: "
                              f"{aws} ({code})", hint="try again in a minute")
        if code == "InvalidArgsException":
            return CloudError(f"EC2 Instance Connect refused the key for {user} on {label}: "
                              f"{aws}", hint="check the user (the OS user on the instance)")
        return translate(exc, ACTION, self.profile, instance_id=instance_id,
                         uses_sso=self._uses_sso())


class KeySource:
    """The keys of one connection's life (a link and the ssh masters it starts later): call it
    for a key the instance accepts now. A key pushed less than REUSE_WITHIN seconds ago is
    handed out again (the master that starts right after its link); else a fresh one is made
    and pushed — a master restarted an hour later gets a key of its own.

    `instance_id` is a callable: a bastion given by its Name tag has an id only once the
    lifecycle's describe resolved it.
    """

    def __init__(self, handle: InstanceConnect, instance_id: Callable[[], str | None],
                 user: str, what: str = "", reuse_within: float = REUSE_WITHIN) -> None:
        self._handle, self._instance_id, self._user, self._what = (handle, instance_id, user,
                                                                    what)
        self._reuse_within = reuse_within
        self._lock = threading.Lock()
        self._last: PushedKey | None = None

    def __call__(self) -> paramiko.PKey:
        return self.pushed().key

    def pushed(self) -> PushedKey:
        instance_id = self._instance_id()
        if not instance_id:
            raise CloudError(f"no instance id known for {self._what or 'the instance'} yet: "
                             "cannot push an ec2-instance-connect key",
                             hint="try again once the instance has been found")
        with self._lock:
            last = self._last
            if (last is not None and last.instance_id == instance_id
                    and last.age < self._reuse_within):
                return last
            self._last = self._handle.fresh_key(instance_id, self._user, self._what)
            return self._last


class PushingAgent(PrivateAgent):
    """An agent socket at a known path for OpenSSH clients (`ssh foo-appserver` through the
    generated ssh config: IdentityAgent): each time a client lists identities, `source` hands
    a key the instance accepts now (KeySource: pushed, or the one pushed seconds ago), and that
    key signs. A push that fails lists no key (ssh then says "Permission denied (publickey)")
    and the reason goes to the daemon's log."""

    RECENT = 8  # keys listed lately that may still be asked to sign

    def __init__(self, source: KeySource, path: Path, comment: str) -> None:
        self._source = source
        self._recent: dict[bytes, paramiko.PKey] = {}
        self._recent_lock = threading.Lock()
        super().__init__(None, comment, path=path)

    def _offer(self) -> list[tuple[Any, bytes]]:
        try:
            key = self._source()
        except BastionTrayError as exc:
            log.warning("ec2-instance-connect agent %s: no key to offer: %s", self.path,
                        exc.message)
            return []
        blob = bytes(key.asbytes())
        with self._recent_lock:
            self._recent.pop(blob, None)
            self._recent[blob] = key
            while len(self._recent) > self.RECENT:
                self._recent.pop(next(iter(self._recent)))
        return [(key, blob)]

    def _signer(self, blob: bytes) -> Any | None:
        with self._recent_lock:
            return self._recent.get(blob)
