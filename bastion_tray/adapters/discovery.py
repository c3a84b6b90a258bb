"""What an AWS account shows that `bastion-tray init` can build a profile from (boto3, read only).

Bastion candidates are live instances whose Name tag contains "bastion" or that sit in a security
group opening TCP 22 to an address range; every live instance comes along (init picks the private
hosts in the bastion's VPC from them), with its Elastic IP; databases come from RDS (instances and
clusters). Only Describe* calls are made. Errors leave as the CloudError / CredentialsError of
cloud_errors.translate; a missing permission for an optional look-up (addresses, security groups,
RDS) becomes a note instead, so a narrow IAM policy still gets a bastion profile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from bastion_tray.adapters.cloud import LIVE_STATES, ApiLimits, uses_sso
from bastion_tray.adapters.cloud_errors import is_denied, translate, where
from bastion_tray.core.config import BastionConfig, Profile
from bastion_tray.core.errors import CloudError, CredentialsError

log = logging.getLogger(__name__)

T = TypeVar("T")
SessionFactory = Callable[[Profile], boto3.session.Session]

SSH_PORT = 22
#: stands in for the instance in translate()'s wording, then is replaced by what init did
_ANY = "<any>"
#: what each call does, in the words of an error message
_WHAT = {
    "DescribeInstances": "list the EC2 instances",
    "DescribeAddresses": "list the Elastic IPs",
    "DescribeSecurityGroups": "list the security groups",
    "DescribeDBInstances": "list the RDS DB instances",
    "DescribeDBClusters": "list the RDS DB clusters",
}
#: every permission init uses, for the hint of an AccessDenied
IAM_ACTIONS = ("ec2:DescribeInstances", "ec2:DescribeAddresses", "ec2:DescribeSecurityGroups",
               "rds:DescribeDBInstances", "rds:DescribeDBClusters")


@dataclass(frozen=True)
class FoundInstance:
    instance_id: str
    state: str  # EC2's
    name: str | None  # the Name tag
    vpc_id: str | None
    subnet_id: str | None
    private_ip: str | None
    public_ip: str | None
    elastic_ip: str | None  # an address with an AllocationId associated with it
    key_name: str | None  # the EC2 key pair it was launched with
    #: why it could be the bastion ("Name matches *bastion*", …); empty: it is not a candidate
    bastion_reasons: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.instance_id} ({self.name})" if self.name else self.instance_id

    @property
    def address(self) -> str | None:
        return self.elastic_ip or self.public_ip

    def summary(self, *, state: bool = True) -> str:
        """"foo-bastion, stopped, Elastic IP 203.0.113.10, vpc-…" (for lists and comments)."""
        address = (f"Elastic IP {self.elastic_ip}" if self.elastic_ip else
                   f"public IP {self.public_ip}" if self.public_ip else "no public address now")
        return ", ".join([self.name or "no Name tag", *([self.state] if state else []), address,
                          self.vpc_id or "no VPC"])


@dataclass(frozen=True)
class FoundDatabase:
    identifier: str  # DBInstanceIdentifier / DBClusterIdentifier
    kind: str  # "instance" or "cluster"
    engine: str  # mysql, postgres, aurora-mysql, …
    address: str | None  # the endpoint (a cluster's writer endpoint); None while creating
    port: int | None
    status: str
    vpc_id: str | None  # None when RDS does not say (clusters never do)


@dataclass(frozen=True)
class Inventory:
    where: str  # "ap-northeast-1 (AWS profile foo)": what was searched
    instances: tuple[FoundInstance, ...]
    databases: tuple[FoundDatabase, ...]
    notes: tuple[str, ...] = field(default=())  # look-ups that were skipped, and why

    @property
    def candidates(self) -> list[FoundInstance]:
        return [i for i in self.instances if i.bastion_reasons]

    def named(self, wanted: str) -> list[FoundInstance]:
        """Instances with id `wanted`, else with that Name tag (exact, else in any case)."""
        return ([i for i in self.instances if i.instance_id == wanted]
                or [i for i in self.instances if i.name == wanted]
                or [i for i in self.instances if (i.name or "").lower() == wanted.lower()])

    def private_hosts(self, bastion: FoundInstance) -> list[FoundInstance]:
        """The bastion's VPC's instances without a public address: reached through it."""
        return [i for i in self.instances if i.vpc_id == bastion.vpc_id and i.private_ip
                and i.instance_id != bastion.instance_id and not i.address]

    def database(self, wanted: str) -> FoundDatabase | None:
        """The database whose identifier or endpoint address is `wanted` (in any case)."""
        return next((d for d in self.databases if d.address and d.port
                     and wanted.lower() in (d.identifier.lower(), d.address.lower())), None)


def init_session(profile: Profile) -> boto3.session.Session:
    """aws_session.default_session's chain (aws_profile, else AWS_PROFILE / default; the
    region), with botocore's full models: init and audit call describes and RDS, which the
    daemon's trimmed EC2 model leaves out — a one-shot command has no use for the memory that
    cut saves."""
    return boto3.session.Session(profile_name=profile.aws_profile, region_name=profile.region)


def default_region(aws_profile: str | None) -> str | None:
    """The region boto3 would use (AWS_REGION, AWS_DEFAULT_REGION, the AWS profile's config)."""
    try:
        region = boto3.session.Session(profile_name=aws_profile).region_name
        return str(region) if region else None
    except BotoCoreError:
        return None  # a bad profile is reported, translated, by the first call


def search_profile(region: str, aws_profile: str | None, name: str = "init") -> Profile:
    """The Profile that translate() and the session factory take: only region and credentials
    matter; the bastion stands for "any instance"."""
    return Profile(name=name, region=region, aws_profile=aws_profile,
                   bastion=BastionConfig(instance_id=None, name=_ANY, user="ec2-user",
                                         identity_file=None))


class ReadOnlyAws:
    """boto3 clients of several services for one profile's look-ups (init, audit), built on
    first use from one session. A handle: close() it (or use `with`)."""

    def __init__(self, profile: Profile, session_factory: SessionFactory | None = None, *,
                 limits: ApiLimits | None = None) -> None:
        self._profile = profile
        self._session_factory = session_factory or init_session
        self._limits = limits or ApiLimits()
        self._session: boto3.session.Session | None = None
        self._clients: dict[str, Any] = {}

    def close(self) -> None:
        clients, self._clients, self._session = self._clients, {}, None
        for client in clients.values():
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            if self._session is None:
                self._session = self._session_factory(self._profile)
            self._clients[service] = self._session.client(
                service, config=self._limits.client_config())
        return self._clients[service]


class Discovery(ReadOnlyAws):
    """Read-only look-ups in one region with one set of credentials. A handle: close() it."""

    def __init__(self, profile: Profile, session_factory: SessionFactory | None = None, *,
                 limits: ApiLimits | None = None) -> None:
        super().__init__(profile, session_factory, limits=limits)
        self._notes: list[str] = []

    def inventory(self) -> Inventory:
        """Everything at once: instances (with EIPs and bastion reasons) and databases."""
        self._notes = []
        raw = self._call("ec2", "DescribeInstances", lambda ec2: flatten(
            ec2.get_paginator("describe_instances").paginate(
                Filters=[{"Name": "instance-state-name", "Values": list(LIVE_STATES)}]),
            "Reservations", "Instances"), optional=False)
        eips = self._elastic_ips()
        ssh_groups = self._groups_opening_ssh()
        instances = tuple(sorted((_instance(i, eips, ssh_groups) for i in raw or []),
                                 key=lambda i: (i.name or "~", i.instance_id)))
        databases = tuple(self._databases())
        log.debug("[init] %s: %d instances, %d databases", self.where, len(instances),
                  len(databases))
        return Inventory(self.where, instances, databases, tuple(self._notes))

    @property
    def where(self) -> str:
        return where(self._profile)

    # --- the look-ups -------------------------------------------------------------------------

    def _elastic_ips(self) -> dict[str, str]:
        reply = self._call("ec2", "DescribeAddresses", lambda ec2: ec2.describe_addresses())
        return {str(a["InstanceId"]): str(a["PublicIp"])
                for a in (reply or {}).get("Addresses", [])
                if a.get("InstanceId") and a.get("AllocationId") and a.get("PublicIp")}

    def _groups_opening_ssh(self) -> dict[str, str]:
        """group id → why it opens SSH ("security group ssh opens TCP 22 to 0.0.0.0/0")."""
        groups = self._call("ec2", "DescribeSecurityGroups", lambda ec2: flatten(
            ec2.get_paginator("describe_security_groups").paginate(), "SecurityGroups"))
        found = {}
        for group in groups or []:
            sources = ssh_sources(group.get("IpPermissions", []))
            if sources:
                found[str(group["GroupId"])] = (f"security group {group.get('GroupName', '?')} "
                                                f"opens TCP {SSH_PORT} to {', '.join(sources)}")
        return found

    def _databases(self) -> list[FoundDatabase]:
        found = []
        instances = self._call("rds", "DescribeDBInstances", lambda rds: flatten(
            rds.get_paginator("describe_db_instances").paginate(), "DBInstances"))
        for db in instances or []:
            if db.get("DBClusterIdentifier"):
                continue  # a member of a cluster: the cluster's endpoint is the one to use
            endpoint = db.get("Endpoint") or {}
            found.append(FoundDatabase(
                str(db["DBInstanceIdentifier"]), "instance", str(db.get("Engine", "")),
                endpoint.get("Address"),
                int_or_none(endpoint.get("Port") or db.get("DbInstancePort")),
                str(db.get("DBInstanceStatus", "?")),
                (db.get("DBSubnetGroup") or {}).get("VpcId")))
        clusters = self._call("rds", "DescribeDBClusters", lambda rds: flatten(
            rds.get_paginator("describe_db_clusters").paginate(), "DBClusters"))
        for cluster in clusters or []:
            found.append(FoundDatabase(
                str(cluster["DBClusterIdentifier"]), "cluster", str(cluster.get("Engine", "")),
                cluster.get("Endpoint"), int_or_none(cluster.get("Port")),
                str(cluster.get("Status", "?")), None))
        return [db for db in found if db.status not in {"deleting", "deleted"}]

    # --- the edge ---------------------------------------------------------------------------

    def _call(self, service: str, action: str, call: Callable[[Any], T], *,
              optional: bool = True) -> T | None:
        """One AWS call. A denied optional call becomes a note and None; the rest raise."""
        try:
            return call(self._client(service))
        except (ClientError, BotoCoreError) as exc:
            error = self._translate(exc, service, action)
            if optional and is_denied(exc):
                self._notes.append(f"skipped: {error.message}")
                log.warning("[init] %s", error.message)
                return None
            raise error from exc

    def _translate(self, exc: BaseException, service: str, action: str) -> CloudError:
        what = _WHAT.get(action, action)
        if is_denied(exc):
            assert isinstance(exc, ClientError)
            message = exc.response.get("Error", {}).get("Message") or "AccessDenied"
            return CloudError(
                f"not allowed to call {service}:{action} to {what} in {self.where}: "
                f"{str(message).splitlines()[0]}",
                hint="add it to the IAM policy of these credentials; init uses "
                     + ", ".join(IAM_ACTIONS))
        using_sso = self._session is not None and uses_sso(self._session)
        error = translate(exc, what, self._profile, instance_id=_ANY, uses_sso=using_sso)
        # translate() words its messages for the daemon's one instance ("describe instance
        # i-…"); init lists everything, and not only from EC2
        message = error.message.replace(f"{what} instance {_ANY}", what)
        hint = error.hint
        if service != "ec2":
            upper = service.upper()
            message = message.replace("EC2", upper)
            hint = hint and hint.replace("EC2", upper)  # AWS_ENDPOINT_URL_EC2 too
        if self._profile.aws_profile and hint:
            hint = hint.replace(f"aws_profile in [profiles.{self._profile.name}]",
                                "--aws-profile")
        cls = CredentialsError if isinstance(error, CredentialsError) else CloudError
        return cls(message, hint=hint)


def ssh_sources(permissions: Iterable[dict[str, Any]]) -> list[str]:
    """The address ranges that ingress `permissions` open TCP 22 to.

    Rules that admit only other security groups do not count: they mark hosts reached *from* a
    bastion, not the bastion itself.
    """
    sources: list[str] = []
    for rule in permissions:
        protocol = str(rule.get("IpProtocol", ""))
        if protocol not in {"tcp", "6", "-1"}:
            continue
        if protocol != "-1" and not (int_or_none(rule.get("FromPort")) or 0) <= SSH_PORT \
                <= (int_or_none(rule.get("ToPort")) or 0):
            continue
        sources += [str(r["CidrIp"]) for r in rule.get("IpRanges", []) if r.get("CidrIp")]
        sources += [str(r["CidrIpv6"]) for r in rule.get("Ipv6Ranges", []) if r.get("CidrIpv6")]
        sources += [str(r["PrefixListId"]) for r in rule.get("PrefixListIds", [])
                    if r.get("PrefixListId")]
    return sorted(set(sources))


def _instance(raw: dict[str, Any], eips: dict[str, str], ssh_groups: dict[str, str]
              ) -> FoundInstance:
    instance_id = str(raw["InstanceId"])
    name = next((str(t.get("Value")) for t in raw.get("Tags", []) or []
                 if t.get("Key") == "Name"), None)
    reasons = []
    if name and "bastion" in name.lower():
        reasons.append("Name matches *bastion*")
    reasons += [ssh_groups[g["GroupId"]] for g in raw.get("SecurityGroups", []) or []
                if g.get("GroupId") in ssh_groups]
    return FoundInstance(
        instance_id=instance_id, state=str((raw.get("State") or {}).get("Name", "?")),
        name=name, vpc_id=raw.get("VpcId"), subnet_id=raw.get("SubnetId"),
        private_ip=raw.get("PrivateIpAddress"), public_ip=raw.get("PublicIpAddress"),
        elastic_ip=eips.get(instance_id), key_name=raw.get("KeyName"),
        bastion_reasons=tuple(reasons))


def flatten(pages: Iterable[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
    """Flatten paginated replies: flatten(pages, "Reservations", "Instances")."""
    items: list[dict[str, Any]] = list(pages)
    for key in keys:
        items = [child for item in items for child in item.get(key, []) or []]
    return items


def int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
