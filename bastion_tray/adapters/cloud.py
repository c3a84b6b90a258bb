"""The boto3 EC2 adapter: one profile's bastion instance, implementing core.ports.Cloud.

It finds the instance (by id, or once by its Name tag), reports its state, addresses and the
team's leases, starts or stops it, and puts or deletes this user's lease tag — on that instance
and no other. It never waits for a state: the core polls.
AWS access goes through boto3's standard chain and environment only (AWS_PROFILE,
AWS_ENDPOINT_URL, …); every botocore error is turned into a CloudError by cloud_errors.translate.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from bastion_tray.adapters.aws_session import ApiLimits, SessionFactory, default_session, uses_sso
from bastion_tray.adapters.cloud_errors import instance_not_found, is_denied, translate, where
from bastion_tray.core.config import Profile
from bastion_tray.core.errors import CloudError, CredentialsError
from bastion_tray.core.ports import InstanceInfo
from bastion_tray.core.team import LEASE_PREFIX, iso_utc, lease_key

log = logging.getLogger(__name__)

#: a Name-tag lookup ignores instances that are gone or going
LIVE_STATES = ("pending", "running", "stopping", "stopped")

#: placeholder keys for a client that is only asked its endpoint: explicit keys keep botocore
#: from resolving credentials, which may call the network (instance metadata, a container
#: endpoint) or run a credential_process
_UNUSED_KEY = "unused"

T = TypeVar("T")


class AwsHandle:
    """One profile's boto3 client of one service: built on first use from the profile's
    session (the standard chain, ApiLimits), closed by close() — the next call builds a new
    one, with whatever credentials are current then. Thread-safe; a context manager."""

    SERVICE = ""  # the boto3 service name
    LABEL = ""  # how log lines name it

    def __init__(self, profile: Profile, session_factory: SessionFactory | None = None,
                 limits: ApiLimits | None = None) -> None:
        self._profile = profile
        self._session_factory = session_factory or default_session
        self._limits = limits or ApiLimits()
        self._lock = threading.Lock()
        self._session: boto3.session.Session | None = None
        self._client: Any = None

    @property
    def profile(self) -> Profile:
        return self._profile

    def close(self) -> None:
        """Close the client's HTTP connections; a later call opens new ones."""
        with self._lock:
            client, self._client, self._session = self._client, None, None
        if client is not None:
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _service_client(self) -> Any:
        with self._lock:
            if self._client is None:
                if self._session is None:
                    self._session = self._session_factory(self._profile)
                self._client = self._session.client(self.SERVICE,
                                                    config=self._limits.client_config())
                log.debug("[profile=%s] %s endpoint %s", self._profile.name, self.LABEL,
                          self._client.meta.endpoint_url)
            return self._client

    def _uses_sso(self) -> bool:
        return self._session is not None and uses_sso(self._session)


class Ec2Cloud(AwsHandle):
    """The bastion of one profile in EC2. Thread-safe; nothing touches AWS before a call."""

    SERVICE, LABEL = "ec2", "EC2"

    def __init__(self, profile: Profile, session_factory: SessionFactory | None = None, *,
                 limits: ApiLimits | None = None) -> None:
        super().__init__(profile, session_factory, limits)
        self._endpoint: str | None = None  # resolved once, by the first `endpoint` read
        # the configured id, or the one the Name tag resolved to: a Name is resolved once per
        # adapter, so a second instance tagged the same later cannot take over mid-session
        self._instance_id: str | None = profile.bastion.instance_id
        self._warned_no_addresses = False

    @property
    def instance_id(self) -> str | None:
        """The instance this adapter acts on; None until a Name lookup resolved it."""
        return self._instance_id

    @property
    def endpoint(self) -> str:
        """The EC2 endpoint URL the calls go to, for messages about an endpoint that hangs.

        As botocore resolves it (AWS_ENDPOINT_URL_EC2, else AWS_ENDPOINT_URL, else the
        endpoint_url of the AWS config, else the region's own), without a network call and
        without credentials; when no client can be built (an unknown AWS profile, a bad
        region), a description like "https://ec2.ap-northeast-1.amazonaws.com".
        """
        with self._lock:
            if self._client is not None:
                return str(self._client.meta.endpoint_url)
            if self._endpoint is None:
                self._endpoint = self._resolve_endpoint()
            return self._endpoint

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
            leases=_leases(instance),
            instance_type=instance.get("InstanceType"),
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

    def put_lease(self, user_id: str, until: float) -> None:
        instance_id = self._resolved_id()
        key, value = lease_key(user_id), iso_utc(until)
        # the one instance as the only resource: a lease never lands on anything else
        self._call("CreateTags", instance_id, lambda ec2: ec2.create_tags(
            Resources=[instance_id], Tags=[{"Key": key, "Value": value}]))
        log.debug("%s lease %s until %s", self._ctx(), user_id, value)

    def delete_lease(self, user_id: str) -> None:
        instance_id = self._resolved_id()
        # no Value: the tag goes whatever its value; EC2 answers a missing one with success
        self._call("DeleteTags", instance_id, lambda ec2: ec2.delete_tags(
            Resources=[instance_id], Tags=[{"Key": lease_key(user_id)}]))
        log.debug("%s lease %s released", self._ctx(), user_id)

    def console_output(self, instance_id: str | None = None, *,
                       latest: bool = True) -> str | None:
        """GetConsoleOutput of the bastion (or `instance_id`): with `latest`, the live output
        where the instance type offers it (Nitro), else the snapshot EC2 took at the last
        lifecycle change. The text (botocore decodes EC2's base64); None when EC2 holds none.
        Raises CloudError; adapters/console.py turns that into a reason to fall back."""
        iid = instance_id or self._resolved_id()

        def read(ec2: Any) -> Any:
            if not latest:
                return ec2.get_console_output(InstanceId=iid)
            try:
                return ec2.get_console_output(InstanceId=iid, Latest=True)
            except ClientError as exc:  # Latest is for Nitro types; the others keep a snapshot
                if _code(exc) not in ("UnsupportedOperation", "InvalidParameterValue",
                                      "InvalidParameterCombination"):
                    raise
                return ec2.get_console_output(InstanceId=iid)

        return self._call("GetConsoleOutput", iid, read).get("Output") or None

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
        started = time.monotonic()
        try:
            return call(self._service_client())
        except (ClientError, BotoCoreError) as exc:
            elapsed = time.monotonic() - started
            state = None
            if _code(exc) == "IncorrectInstanceState":  # EC2's message does not say which
                state = self._state_quietly(instance_id)
            error = translate(exc, action, self._profile, instance_id=instance_id,
                              uses_sso=self._uses_sso(), state=state, elapsed=elapsed)
            if isinstance(error, CredentialsError):
                # a client keeps the credentials it was built with (none, or expired ones):
                # drop it, so credentials fixed meanwhile are used by the next call
                self.close()
            raise error from exc

    def _resolve_endpoint(self) -> str:
        """`endpoint` from a client built only for it; the caller holds the lock."""
        try:
            if self._session is None:
                self._session = self._session_factory(self._profile)
            client = self._session.client("ec2", aws_access_key_id=_UNUSED_KEY,
                                          aws_secret_access_key=_UNUSED_KEY,
                                          config=self._limits.client_config())
        except (BotoCoreError, ValueError) as exc:  # ValueError: a malformed endpoint URL
            log.debug("%s no EC2 client to ask its endpoint: %s", self._ctx(), exc)
            return (os.environ.get("AWS_ENDPOINT_URL_EC2") or os.environ.get("AWS_ENDPOINT_URL")
                    or f"https://ec2.{self._profile.region}.amazonaws.com")
        try:
            return str(client.meta.endpoint_url)
        finally:
            client.close()

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


def _leases(instance: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """Every `bastion-tray:lease:<user_id>` tag as (user_id, raw value), sorted by user id."""
    tags = ((str(tag.get("Key", "")), str(tag.get("Value", "")))
            for tag in instance.get("Tags", []) or [])
    return tuple(sorted((key.removeprefix(LEASE_PREFIX), value) for key, value in tags
                        if key.startswith(LEASE_PREFIX) and key != LEASE_PREFIX))


def _code(exc: BaseException) -> str | None:
    return exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
