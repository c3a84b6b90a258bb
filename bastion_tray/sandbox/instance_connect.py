"""The sandbox's EC2 Instance Connect: SendSSHPublicKey that the sandbox's sshd believes.

moto answers SendSSHPublicKey with success and keeps nothing, so a pushed key would open no
door. This front plays AWS's part: an HTTP server on 127.0.0.1 speaking the service's JSON 1.1
protocol (X-Amz-Target ``AWSEC2InstanceConnectService.SendSSHPublicKey``, the shapes and error
codes of botocore's ``ec2-instance-connect`` model) that checks with moto that the instance
exists and runs, and records the key for `validity` seconds (AWS: 60). Boto3 reaches it through
AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT.

What an instance's sshd accepts is a file per instance and user, ``<dir>/<instance-id>/<user>``,
of lines ``<expiry, epoch seconds> <key>``, rewritten on every push; the sshd's
AuthorizedKeysCommand (`keys_command`, a /bin/sh script: sshd demands a root-owned program when
it runs as root) prints the lines whose expiry has not passed by the clock — the part of AWS's
`eic_run_authorized_keys` that matters. Signatures are not checked (dummy credentials).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from bastion_tray.sandbox import aws
from bastion_tray.sandbox.net import require_loopback

log = logging.getLogger(__name__)

TARGET = "AWSEC2InstanceConnectService.SendSSHPublicKey"
ENDPOINT_ENV = "AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT"  # where boto3 finds it
VALIDITY = 60.0  # seconds AWS keeps a pushed key
MAX_BODY = 64 * 1024
_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+$")
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]{0,31}$")
_INSTANCE = re.compile(r"^i-[0-9a-f]{8,17}$")

KEYS_COMMAND = """#!/bin/sh
# AuthorizedKeysCommand of the sandbox's sshd: the keys pushed with SendSSHPublicKey for this
# instance ($1: its directory) and user ($2) whose expiry has not passed
PATH=/usr/bin:/bin
file="$1/$2"
[ -f "$file" ] || exit 0
now=$(date +%s)
while read -r until key; do
  [ "$until" -gt "$now" ] && printf '%s\\n' "$key"
done < "$file"
exit 0
"""


class ApiError(Exception):
    """An error answer of the API: its code (the shape's name), HTTP status and message."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class InstanceConnectFront:
    """The server, a handle: `url` for boto3, `keys_dir(instance_id)` and `keys_command` for an
    sshd, `validity` (seconds; tests shorten it), `deny(instance_id)` to play a missing IAM
    permission, `close()`."""

    def __init__(self, instance_state: Callable[[str], str | None], state_dir: Path,
                 validity: float = VALIDITY, clock: Callable[[], float] = time.time) -> None:
        """`instance_state(id)`: the instance's state in the sandbox's EC2, None if unknown."""
        self._instance_state, self._clock = instance_state, clock
        self.validity = validity
        self._dir = state_dir
        self._dir.mkdir(parents=True, exist_ok=True)
        self.keys_command = self._dir / "authorized-keys-command.sh"
        self.keys_command.write_text(KEYS_COMMAND)
        self.keys_command.chmod(0o755)
        self._lock = threading.Lock()
        self._keys: dict[tuple[str, str], list[tuple[float, str]]] = {}
        self._denied: set[str] = set()
        self.pushes: list[tuple[str, str, str]] = []  # (instance, user, key) accepted, in order
        front = self

        class Handler(_Handler):
            owner = front

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        require_loopback(str(host), "the EC2 Instance Connect front")
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="sandbox-instance-connect")
        self._thread.start()
        log.info("[sandbox] EC2 Instance Connect front on %s", self.url)

    def keys_dir(self, instance_id: str) -> Path:
        """Where the keys pushed to `instance_id` are (one file per user)."""
        path = self._dir / instance_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def deny(self, instance_id: str, denied: bool = True) -> None:
        """Answer AccessDeniedException for `instance_id`, as IAM does without the permission."""
        with self._lock:
            (self._denied.add if denied else self._denied.discard)(instance_id)

    def expiry_of(self, instance_id: str, user: str, key_line: str) -> float | None:
        """When the front stops vouching for `key_line` (epoch seconds); None if not pushed."""
        with self._lock:
            found = [until for until, line in self._keys.get((instance_id, user), [])
                     if line == key_line]
        return max(found) if found else None

    def now(self) -> float:
        return self._clock()

    def send_ssh_public_key(self, body: dict[str, Any]) -> dict[str, Any]:
        instance_id, user, key = (body.get("InstanceId"), body.get("InstanceOSUser"),
                                  body.get("SSHPublicKey"))
        for name, value in (("InstanceId", instance_id), ("InstanceOSUser", user),
                            ("SSHPublicKey", key)):
            if not isinstance(value, str) or not value:
                raise ApiError("InvalidArgsException", f"{name} is required")
        assert isinstance(instance_id, str) and isinstance(user, str) and isinstance(key, str)
        line = " ".join(key.split()[:2])
        if not _INSTANCE.match(instance_id):
            raise ApiError("InvalidArgsException", f"Invalid instance ID: {instance_id}")
        if not _USER.match(user):
            raise ApiError("InvalidArgsException", f"Invalid OS user: {user}")
        if not _KEY.match(line):
            raise ApiError("InvalidArgsException", "Unsupported SSH public key format")
        with self._lock:
            denied = instance_id in self._denied
        if denied:
            raise ApiError("AccessDeniedException",
                           "User: arn:aws:iam::123456789012:user/sandbox is not authorized to "
                           "perform: ec2-instance-connect:SendSSHPublicKey on resource: "
                           f"arn:aws:ec2:ap-northeast-1:123456789012:instance/{instance_id}")
        state = self._instance_state(instance_id)
        if state is None:
            raise ApiError("EC2InstanceNotFoundException",
                           f"Instance {instance_id} not found")
        if state != "running":
            raise ApiError("EC2InstanceStateInvalidException",
                           f"Instance {instance_id} is in state {state}; it must be running")
        now = self._clock()
        with self._lock:
            kept = [(until, each) for until, each in self._keys.get((instance_id, user), [])
                    if until > now]
            kept.append((now + self.validity, line))
            self._keys[(instance_id, user)] = kept
            self.pushes.append((instance_id, user, line))
            self._write(instance_id, user, kept)
        return {"RequestId": str(uuid.uuid4()), "Success": True}

    def _write(self, instance_id: str, user: str, keys: list[tuple[float, str]]) -> None:
        """Atomically: sshd may be reading the file while another push lands."""
        path = self.keys_dir(instance_id) / user
        tmp = path.with_name(f".{user}.{threading.get_ident()}")
        tmp.write_text("".join(f"{int(until)} {line}\n" for until, line in keys))
        os.replace(tmp, path)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    owner: InstanceConnectFront
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("[sandbox eic] " + format, *args)

    def do_POST(self) -> None:
        try:
            size = int(self.headers.get("Content-Length") or 0)
            if not 0 <= size <= MAX_BODY:
                raise ApiError("InvalidArgsException", "request too large")
            raw = self.rfile.read(size)
            target = self.headers.get("X-Amz-Target", "")
            if target != TARGET:
                raise ApiError("UnknownOperationException", f"unknown operation {target!r}")
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                raise ApiError("SerializationException", "malformed JSON") from None
            if not isinstance(body, dict):
                raise ApiError("SerializationException", "expected a JSON object")
            self._answer(200, self.owner.send_ssh_public_key(body))
        except ApiError as exc:
            self._answer(exc.status, {"__type": exc.code, "Message": exc.message},
                         error=exc.code)
        except Exception as exc:  # a bug here must answer, not hang the client
            log.exception("[sandbox eic] internal error")
            self._answer(500, {"__type": "ServiceException", "Message": str(exc)},
                         error="ServiceException")

    def _answer(self, status: int, payload: dict[str, Any], error: str | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        if error is not None:
            self.send_header("x-amzn-ErrorType", error)
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(data)


def moto_instance_state(ec2: Any) -> Callable[[str], str | None]:
    """`instance_state` for the front, asking the sandbox's EC2 (moto)."""
    lock = threading.Lock()  # one boto3 client, the front's threads take turns

    def state(instance_id: str) -> str | None:
        with lock:
            try:
                found = ec2.describe_instances(InstanceIds=[instance_id])
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code", "").startswith("InvalidInstanceID"):
                    return None
                raise
        for reservation in found.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                return str(instance.get("State", {}).get("Name", "unknown"))
        return None

    return state


def start_front(endpoint_url: str, state_dir: Path, env: dict[str, str]) -> InstanceConnectFront:
    """The front for the sandbox whose moto is at `endpoint_url`; `env` (the sandbox's) gets
    the variable that sends boto3's ec2-instance-connect calls to it."""
    front = InstanceConnectFront(moto_instance_state(aws.ec2_client(endpoint_url)), state_dir)
    env[ENDPOINT_ENV] = front.url
    return front
