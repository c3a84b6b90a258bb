"""Read one profile's posture for `audit` (core/audit.py) with boto3: read-only describes.

The bastion (by instance_id or Name tag), its VPC's other live instances, the VPC's security
groups, the bastion's Elastic IP and the region's RDS DB instances. A describe that AWS refuses
(AccessDenied / UnauthorizedOperation) is recorded in `Posture.denied` and the checks that need
it warn; every other botocore error becomes a CloudError that says what failed and what to do.
Sessions are init's (discovery.init_session: the profile's aws_profile and region, botocore's
full models — RDS is not in the daemon's trimmed one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from bastion_tray.adapters.cloud import LIVE_STATES, ApiLimits, uses_sso
from bastion_tray.adapters.cloud_errors import (
    NOT_FOUND,
    instance_not_found,
    is_denied,
    translate,
    where,
)
from bastion_tray.adapters.discovery import ReadOnlyAws, flatten, int_or_none
from bastion_tray.core.config import Profile
from bastion_tray.core.errors import CloudError, CredentialsError
from bastion_tray.core.posture import (
    Database,
    ElasticIp,
    Group,
    Instance,
    Posture,
    Rule,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
SessionFactory = Callable[[Profile], boto3.session.Session]

#: stands in for the instance in translate()'s wording, then is cut out (as discovery does)
_ANY = "<any>"
_WHAT = {
    "DescribeInstances": "list the EC2 instances",
    "DescribeSecurityGroups": "list the security groups",
    "DescribeAddresses": "list the Elastic IPs",
    "DescribeDBInstances": "list the RDS DB instances",
}


class PostureReader(ReadOnlyAws):
    """Read-only look-ups for one profile. A handle: close() it (or use `with`)."""

    def __init__(self, profile: Profile, session_factory: SessionFactory | None = None, *,
                 limits: ApiLimits | None = None) -> None:
        super().__init__(profile, session_factory, limits=limits)
        self._denied: set[str] = set()

    def read(self) -> Posture:
        self._denied = set()
        bastion_raw = self._bastion()
        bastion = _instance(bastion_raw) if bastion_raw is not None else None
        vpc_id = bastion_raw.get("VpcId") if bastion_raw is not None else None
        others: tuple[Instance, ...] = ()
        groups: dict[str, Group] = {}
        eip = None
        if bastion is not None:
            others = tuple(_instance(i) for i in self._vpc_instances(vpc_id)
                           if i.get("InstanceId") != bastion.instance_id)
            groups = self._groups(vpc_id, bastion)
            eip = self._elastic_ip(bastion.instance_id)
        b = self._profile.bastion
        posture = Posture(
            profile=self._profile.name, region=self._profile.region,
            ssh_ports=frozenset({22, b.port}), auto_stop=b.auto_stop, ingress=b.ingress,
            bastion=bastion, vpc_id=vpc_id, others=others, groups=groups, elastic_ip=eip,
            databases=tuple(self._databases()), denied=frozenset(self._denied), now=time.time(),
            forward_hosts=frozenset(f.remote_host.lower()
                                    for f in self._profile.forwards.values()))
        log.debug("[profile=%s] posture of %s: %d other instances, %d groups, %d databases, "
                  "denied %s", self._profile.name, vpc_id, len(others), len(groups),
                  len(posture.databases), sorted(self._denied) or "nothing")
        return posture

    # --- the look-ups -----------------------------------------------------------------------

    def _bastion(self) -> dict[str, Any] | None:
        b = self._profile.bastion
        if b.instance_id is not None:
            wanted = b.instance_id
            found = self._call("ec2", "DescribeInstances", lambda ec2: flatten(
                [ec2.describe_instances(InstanceIds=[wanted])], "Reservations", "Instances"),
                instance_id=wanted)
            if found is None:
                return None
            match = [i for i in found if i.get("InstanceId") == wanted]
            if not match:
                raise instance_not_found(self._profile, wanted, "no such instance in the reply")
            return match[0]
        filters = [{"Name": "tag:Name", "Values": [b.name or ""]},
                   {"Name": "instance-state-name", "Values": list(LIVE_STATES)}]
        found = self._call("ec2", "DescribeInstances", lambda ec2: flatten(
            ec2.get_paginator("describe_instances").paginate(Filters=filters),
            "Reservations", "Instances"))
        if found is None:
            return None
        section = f"[profiles.{self._profile.name}.bastion]"
        if not found:
            raise CloudError(f"no instance tagged Name={b.name} in {where(self._profile)}",
                             hint=f"check name in {section}, the region and the AWS profile")
        if len(found) > 1:
            ids = ", ".join(sorted(str(i["InstanceId"]) for i in found))
            raise CloudError(f"{len(found)} instances are tagged Name={b.name} in "
                             f"{where(self._profile)}: {ids}",
                             hint=f'set instance_id = "i-…" in {section} to pick one')
        return found[0]

    def _vpc_instances(self, vpc_id: str | None) -> list[dict[str, Any]]:
        if vpc_id is None:
            return []
        filters = [{"Name": "vpc-id", "Values": [vpc_id]},
                   {"Name": "instance-state-name", "Values": list(LIVE_STATES)}]
        return self._call("ec2", "DescribeInstances", lambda ec2: flatten(
            ec2.get_paginator("describe_instances").paginate(Filters=filters),
            "Reservations", "Instances")) or []

    def _groups(self, vpc_id: str | None, bastion: Instance) -> dict[str, Group]:
        if vpc_id is not None:
            params: dict[str, Any] = {"Filters": [{"Name": "vpc-id", "Values": [vpc_id]}]}
        else:
            params = {"GroupIds": list(bastion.group_ids)}
        raw = self._call("ec2", "DescribeSecurityGroups", lambda ec2: flatten(
            ec2.get_paginator("describe_security_groups").paginate(**params),
            "SecurityGroups"))
        groups = (_group(g) for g in raw or [])
        return {g.group_id: g for g in groups}

    def _elastic_ip(self, instance_id: str) -> ElasticIp | None:
        filters = [{"Name": "instance-id", "Values": [instance_id]}]
        reply = self._call("ec2", "DescribeAddresses",
                           lambda ec2: ec2.describe_addresses(Filters=filters))
        for address in (reply or {}).get("Addresses", []):
            if address.get("InstanceId") == instance_id and address.get("AllocationId"):
                return ElasticIp(str(address.get("PublicIp", "?")), str(address["AllocationId"]),
                                 address.get("AssociationId"))
        return None

    def _databases(self) -> list[Database]:
        raw = self._call("rds", "DescribeDBInstances", lambda rds: flatten(
            rds.get_paginator("describe_db_instances").paginate(), "DBInstances"))
        return [Database(str(db["DBInstanceIdentifier"]), bool(db.get("PubliclyAccessible")),
                         (db.get("DBSubnetGroup") or {}).get("VpcId"),
                         (db.get("Endpoint") or {}).get("Address"))
                for db in raw or [] if db.get("DBInstanceStatus") not in ("deleting", "deleted")]

    # --- the edge ---------------------------------------------------------------------------

    def _call(self, service: str, action: str, call: Callable[[Any], T], *,
              instance_id: str | None = None) -> T | None:
        """One AWS call. Refused: recorded, None. Any other failure: a CloudError."""
        try:
            return call(self._client(service))
        except (ClientError, BotoCoreError) as exc:
            if is_denied(exc):
                self._denied.add(f"{service}:{action}")
                log.warning("[profile=%s] audit: %s:%s refused; the checks that need it warn",
                            self._profile.name, service, action)
                return None
            raise self._translate(exc, service, action, instance_id) from exc

    def _translate(self, exc: BaseException, service: str, action: str,
                   instance_id: str | None) -> CloudError:
        if (instance_id is not None and isinstance(exc, ClientError)
                and exc.response.get("Error", {}).get("Code") in NOT_FOUND):
            return instance_not_found(self._profile, instance_id,
                                      str(exc.response["Error"]["Code"]))
        what = _WHAT.get(action, action)
        using_sso = self._session is not None and uses_sso(self._session)
        error = translate(exc, what, self._profile, instance_id=_ANY, uses_sso=using_sso)
        # translate() words its messages for the daemon's one instance; audit lists
        message, hint = error.message.replace(f"{what} instance {_ANY}", what), error.hint
        if service != "ec2":
            message = message.replace("EC2", service.upper())
            hint = hint and hint.replace("EC2", service.upper())
        cls = CredentialsError if isinstance(error, CredentialsError) else CloudError
        return cls(message, hint=hint)


def read_posture(profile: Profile, session_factory: SessionFactory | None = None) -> Posture:
    with PostureReader(profile, session_factory) as reader:
        return reader.read()


def _instance(raw: dict[str, Any]) -> Instance:
    name = next((str(t.get("Value")) for t in raw.get("Tags", []) or []
                 if t.get("Key") == "Name"), None)
    tokens = (raw.get("MetadataOptions") or {}).get("HttpTokens")
    return Instance(
        instance_id=str(raw["InstanceId"]), name=name,
        state=str((raw.get("State") or {}).get("Name", "?")),
        instance_type=str(raw.get("InstanceType", "?")),
        group_ids=tuple(str(g["GroupId"]) for g in raw.get("SecurityGroups", []) or []
                        if g.get("GroupId")),
        http_tokens=str(tokens) if tokens else None)


def _group(raw: dict[str, Any]) -> Group:
    group_id = str(raw["GroupId"])
    return Group(group_id, str(raw.get("GroupName", "?")),
                 tuple(rule for p in raw.get("IpPermissions", []) or []
                       for rule in _rules(group_id, p)))


def _rules(group_id: str, permission: dict[str, Any]) -> Iterable[Rule]:
    """One Rule per source of an IpPermission."""
    protocol = str(permission.get("IpProtocol", "-1"))
    ports = (int_or_none(permission.get("FromPort")), int_or_none(permission.get("ToPort")))
    if protocol == "-1":
        ports = (None, None)
    sources = (("cidr", "IpRanges", "CidrIp"), ("cidr6", "Ipv6Ranges", "CidrIpv6"),
               ("prefix-list", "PrefixListIds", "PrefixListId"),
               ("group", "UserIdGroupPairs", "GroupId"))
    for kind, key, field_name in sources:
        for source in permission.get(key, []) or []:
            if source.get(field_name):
                yield Rule(group_id, protocol, *ports, source=str(source[field_name]),
                           source_kind=kind, description=str(source.get("Description") or ""))
