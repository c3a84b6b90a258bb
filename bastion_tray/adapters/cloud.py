"""The boto3 EC2 adapter: one profile's bastion instance, implementing core.ports.Cloud.

It finds the instance (by id, or once by its Name tag), reports its state and addresses, and
starts or stops it — that instance and no other. It never waits for a state: the core polls.
AWS access goes through boto3's standard chain and environment only (AWS_PROFILE,
AWS_ENDPOINT_URL, …); every botocore error is turned into a CloudError by cloud_errors.translate.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from bastion_tray.adapters.cloud_errors import instance_not_found, is_denied, translate, where
from bastion_tray.core.config import Profile
from bastion_tray.core.errors import CloudError, CredentialsError
from bastion_tray.core.ports import InstanceInfo

log = logging.getLogger(__name__)

USER_AGENT_EXTRA = "bastion-tray"
#: a Name-tag lookup ignores instances that are gone or going
LIVE_STATES = ("pending", "running", "stopping", "stopped")

T = TypeVar("T")
SessionFactory = Callable[[Profile], boto3.session.Session]


@dataclass(frozen=True)
class ApiLimits:
    """How long and how often one EC2 call may try before it fails."""

    total_max_attempts: int = 5  # per call, the first try included; throttling is retried too
    connect_timeout: float = 5.0  # seconds to open a connection to the EC2 endpoint
    read_timeout: float = 15.0  # seconds to wait for a reply

    def client_config(self) -> Config:
        # "standard" mode retries throttling (RequestLimitExceeded, Throttling, …), 5xx and
        # connection errors with jittered exponential backoff; set here explicitly so a user's
        # ~/.aws/config (retry_mode = legacy, max_attempts = 1) cannot weaken it.
        return Config(retries={"total_max_attempts": self.total_max_attempts,
                               "mode": "standard"},
                      connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
                      user_agent_extra=USER_AGENT_EXTRA)


#: botocore's EC2 model cut to the four operations we call (scripts/trim_ec2_model.py): the
#: full model costs a daemon that idles all day ~24 MB of memory
TRIMMED_MODELS = Path(__file__).resolve().parent / "botocore_data"


def default_session(profile: Profile) -> boto3.session.Session:
    """boto3's standard chain: aws_profile (else AWS_PROFILE / default), the profile's region."""
    core = botocore.session.Session()
    data_path = core.get_config_variable("data_path")  # AWS_DATA_PATH of the user, if any
    core.set_config_variable("data_path", os.pathsep.join(
        p for p in (data_path, str(TRIMMED_MODELS)) if p))
    return boto3.session.Session(botocore_session=core, profile_name=profile.aws_profile,
                                 region_name=profile.region)


def uses_sso(session: boto3.session.Session) -> bool:
    """Whether the session's AWS profile logs in through IAM Identity Center (SSO)."""
    # boto3 offers no public way to its botocore session, whose scoped config this needs
    botocore_session = getattr(session, "_session", None)
    if botocore_session is None:
        return False
    try:
        scoped = botocore_session.get_scoped_config()
    except BotoCoreError:
        return False
    return "sso_start_url" in scoped or "sso_session" in scoped


class Ec2Cloud:
    """The bastion of one profile in EC2. Thread-safe; nothing touches AWS before a call."""

    def __init__(self, profile: Profile, session_factory: SessionFactory | None = None, *,
                 limits: ApiLimits | None = None) -> None:
        self._profile = profile
        self._session_factory = session_factory or default_session
        self._limits = limits or ApiLimits()
        self._lock = threading.Lock()
        self._session: boto3.session.Session | None = None
        self._client: Any = None
        # the configured id, or the one the Name tag resolved to: a Name is resolved once per
        # adapter, so a second instance tagged the same later cannot take over mid-session
        self._instance_id: str | None = profile.bastion.instance_id
        self._warned_no_addresses = False

    @property
    def profile(self) -> Profile:
        return self._profile

    @property
    def instance_id(self) -> str | None:
        """The instance this adapter acts on; None until a Name lookup resolved it."""
        return self._instance_id

    # --- the Cloud protocol ---------------------------------------------------------------

    def describe(self) -> InstanceInfo:
        if self._instance_id is None:
            instance = self._find_by_name()
        else:
            instance = self._describe_by_id(self._instance_id)
        instance_id = str(instance["InstanceId"])
        info = InstanceInfo(
            instance_id=instance_id,
            state=str(instance.get("State", {}).get("Name", "unknown")),
            name=_name_tag(instance),
            public_ip=instance.get("PublicIpAddress"),
            elastic_ip=self._elastic_ip(instance_id),
        )
        log.debug("%s %s, address %s", self._ctx(), info.state, info.address or "none")
        return info

    def start(self) -> None:
        instance_id = self._resolved_id()
        reply = self._call("StartInstances", instance_id,
                           lambda ec2: ec2.start_instances(InstanceIds=[instance_id]))
        self._log_change("StartInstances", reply.get("StartingInstances", []))

    def stop(self) -> None:
        instance_id = self._resolved_id()
        reply = self._call("StopInstances", instance_id,
                           lambda ec2: ec2.stop_instances(InstanceIds=[instance_id]))
        self._log_change("StopInstances", reply.get("StoppingInstances", []))

    # --- handle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connections of the EC2 client; a later call opens new ones."""
        with self._lock:
            client, self._client, self._session = self._client, None, None
        if client is not None:
            client.close()

    def __enter__(self) -> Ec2Cloud:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- lookups ----------------------------------------------------------------------------

    def _resolved_id(self) -> str:
        return self._instance_id or str(self._find_by_name()["InstanceId"])

    def _describe_by_id(self, instance_id: str) -> dict[str, Any]:
        reply = self._call("DescribeInstances", instance_id,
                           lambda ec2: ec2.describe_instances(InstanceIds=[instance_id]))
        for instance in _instances([reply]):
            if instance.get("InstanceId") == instance_id:
                return instance
        raise instance_not_found(self._profile, instance_id, "no such instance in the reply")

    def _find_by_name(self) -> dict[str, Any]:
        name = self._profile.bastion.name or ""
        filters = [{"Name": "tag:Name", "Values": [name]},
                   {"Name": "instance-state-name", "Values": list(LIVE_STATES)}]
        found = self._call("DescribeInstances", None, lambda ec2: _instances(
            ec2.get_paginator("describe_instances").paginate(Filters=filters)))
        if not found:
            raise CloudError(
                f"no instance tagged Name={name} in {where(self._profile)}",
                hint=f"check name in [profiles.{self._profile.name}.bastion], the region and "
                     "the AWS profile (terminated instances do not count)")
        if len(found) > 1:
            listed = ", ".join(f"{i['InstanceId']} ({i.get('State', {}).get('Name', '?')})"
                               for i in sorted(found, key=lambda i: str(i["InstanceId"])))
            raise CloudError(
                f"{len(found)} instances are tagged Name={name} in {where(self._profile)}: "
                f"{listed}",
                hint=f'set instance_id = "i-…" in [profiles.{self._profile.name}.bastion] '
                     "to pick one")
        instance = found[0]
        self._instance_id = str(instance["InstanceId"])
        log.info("%s resolved Name=%s", self._ctx(), name)
        return instance

    def _elastic_ip(self, instance_id: str) -> str | None:
        """The Elastic IP associated with the instance (an address with an AllocationId)."""
        filters = [{"Name": "instance-id", "Values": [instance_id]}]
        try:
            reply = self._call("DescribeAddresses", instance_id,
                               lambda ec2: ec2.describe_addresses(Filters=filters))
        except CloudError as err:
            if isinstance(err, CredentialsError) or not is_denied(err.__cause__):
                raise
            # an EIP is also the instance's PublicIpAddress, so host = "auto" still works
            if not self._warned_no_addresses:
                self._warned_no_addresses = True
                log.warning("%s %s; using the public IP as the address", self._ctx(), err)
            return None
        for address in reply.get("Addresses", []):
            if address.get("InstanceId") == instance_id and address.get("AllocationId"):
                return str(address["PublicIp"])
        return None

    # --- the edge -----------------------------------------------------------------------

    def _call(self, action: str, instance_id: str | None, call: Callable[[Any], T]) -> T:
        """Run one EC2 call; every botocore failure leaves as a translated CloudError."""
        try:
            return call(self._ec2())
        except (ClientError, BotoCoreError) as exc:
            state = None
            if _code(exc) == "IncorrectInstanceState":  # EC2's message does not say which
                state = self._state_quietly(instance_id)
            error = translate(exc, action, self._profile, instance_id=instance_id,
                              uses_sso=self._uses_sso(), state=state)
            if isinstance(error, CredentialsError):
                # a client keeps the credentials it was built with (none, or expired ones):
                # drop it, so credentials fixed meanwhile are used by the next call
                self.close()
            raise error from exc

    def _ec2(self) -> Any:
        with self._lock:
            if self._client is None:
                self._session = self._session_factory(self._profile)
                self._client = self._session.client("ec2", config=self._limits.client_config())
                log.debug("%s EC2 endpoint %s", self._ctx(), self._client.meta.endpoint_url)
            return self._client

    def _uses_sso(self) -> bool:
        return self._session is not None and uses_sso(self._session)

    def _state_quietly(self, instance_id: str | None) -> str | None:
        """The instance's state for an error message; None when even that fails."""
        if instance_id is None or self._client is None:
            return None
        try:
            reply = self._client.describe_instances(InstanceIds=[instance_id])
            return str(_instances([reply])[0]["State"]["Name"])
        except (ClientError, BotoCoreError, LookupError):
            return None

    def _log_change(self, action: str, changes: list[dict[str, Any]]) -> None:
        for change in changes:
            log.info("%s %s: %s → %s", self._ctx(), action,
                     change.get("PreviousState", {}).get("Name", "?"),
                     change.get("CurrentState", {}).get("Name", "?"))

    def _ctx(self) -> str:
        return (f"[profile={self._profile.name} "
                f"instance={self._instance_id or self._profile.bastion.label}]")


def _instances(pages: Any) -> list[dict[str, Any]]:
    return [instance for page in pages for reservation in page.get("Reservations", [])
            for instance in reservation.get("Instances", [])]


def _name_tag(instance: dict[str, Any]) -> str | None:
    for tag in instance.get("Tags", []) or []:
        if tag.get("Key") == "Name":
            return str(tag.get("Value"))
    return None


def _code(exc: BaseException) -> str | None:
    return exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
