"""VPCs with bad postures for `audit`'s tests, next to the sandbox's own in the same moto.

Each is seeded exactly like the sandbox's VPC (vpc.seed_vpc, Name tags of its own) and then
broken in one way; leaving the `with` block removes all of it again (RDS, Elastic IP, instances,
groups, subnets, the VPC), so the sandbox that the whole test session shares stays as seeded.
Nothing ever connects to these instances: no sshd follows them.
"""

from __future__ import annotations

import contextlib
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3

from bastion_tray.core.ingress import description as rule_description
from bastion_tray.sandbox import aws, vpc
from bastion_tray.sandbox.configfile import Value
from bastion_tray.sandbox.net import require_loopback

log = logging.getLogger(__name__)

#: a posture's name → what is wrong with it (or right, for "seed" and "rds-private")
POSTURES = {
    "seed": "as the sandbox seeds it: SSH only on the bastion (open to the world), an Elastic "
            "IP on the stopped bastion, IMDSv2 everywhere",
    "appserver-world-ssh": "the app server also takes SSH from 0.0.0.0/0 (group legacy-ssh)",
    "rds-public": "two RDS instances in the VPC, one of them publicly accessible",
    "rds-private": "one RDS instance in the VPC, not publicly accessible",
    "bastion-extra-ingress": "the bastion's ssh group also opens tcp 3389 to 0.0.0.0/0",
    "imdsv1": "the app server allows IMDSv1 (HttpTokens optional)",
    "web-extra-port": "the web group also opens tcp 8080 to 0.0.0.0/0",
    "no-eip": "the bastion has no Elastic IP",
    "large-bastion": "the bastion is an m5.large",
    "my-ip": "no world SSH rule: only a bastion-tray /32 rule, as ingress = \"my-ip\" leaves it",
}
#: a live my-ip rule of a teammate's: 203.0.113.7/32, its until an hour after seeding
MY_IP_CIDR, MY_IP_USER = "203.0.113.7/32", "alice@laptop"


@dataclass
class _Made:
    databases: list[str] = field(default_factory=list)
    subnet_group: str | None = None
    groups: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PostureVpc:
    kind: str
    vpc: vpc.SeededVpc
    databases: tuple[str, ...]  # the RDS instances made in it

    def bastion_config(self) -> dict[str, Value | None]:
        """write_config's extra_bastion: this VPC's bastion by id (Name tags repeat)."""
        return {"name": None, "instance_id": self.vpc.bastion_id}


def _no_sshd(address: str) -> int:
    return 22  # nothing listens for these VPCs: they are only described


def _client(service: str, endpoint: str) -> Any:
    require_loopback(urllib.parse.urlsplit(endpoint).hostname or endpoint, f"{service} endpoint")
    session = boto3.session.Session(aws_access_key_id=aws.DUMMY_CREDENTIAL,
                                    aws_secret_access_key=aws.DUMMY_CREDENTIAL,
                                    region_name=aws.REGION)
    return session.client(service, endpoint_url=endpoint)


@contextlib.contextmanager
def posture_vpc(endpoint_url: str, kind: str) -> Iterator[PostureVpc]:
    """A VPC with posture `kind` (one of POSTURES) in the moto at `endpoint_url`."""
    if kind not in POSTURES:
        raise ValueError(f"unknown posture {kind!r}; known: {', '.join(POSTURES)}")
    ec2, rds = _client("ec2", endpoint_url), _client("rds", endpoint_url)
    tag = f"audit-{kind}"
    seeded = vpc.seed_vpc(ec2, _no_sshd, names=(f"{tag}-bastion", f"{tag}-appserver"))
    made = _Made()
    try:
        _BREAKS[kind](ec2, rds, seeded, made)
        log.info("[sandbox] posture %s in %s", kind, seeded.vpc_id)
        yield PostureVpc(kind, seeded, tuple(made.databases))
    finally:
        _remove(ec2, rds, seeded, made)


# --- the breaks -------------------------------------------------------------------------------


def _world(port: int) -> list[dict[str, Any]]:
    return [{"IpProtocol": "tcp", "FromPort": port, "ToPort": port,
             "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]


def _appserver_world_ssh(ec2: Any, rds: Any, seeded: vpc.SeededVpc, made: _Made) -> None:
    group = str(ec2.create_security_group(GroupName="legacy-ssh", Description="ssh from anywhere",
                                          VpcId=seeded.vpc_id)["GroupId"])
    made.groups.append(group)
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=_world(22))
    groups = seeded.security_groups
    ec2.modify_instance_attribute(InstanceId=seeded.appserver_id,
                                  Groups=[groups["default"], groups["web"], group])


def _databases(rds: Any, seeded: vpc.SeededVpc, made: _Made, public: dict[str, bool]) -> None:
    made.subnet_group = f"audit-{seeded.vpc_id}"
    rds.create_db_subnet_group(DBSubnetGroupName=made.subnet_group,
                               DBSubnetGroupDescription="the private subnets",
                               SubnetIds=[seeded.public_subnet_id, seeded.private_subnet_id])
    for name, publicly in public.items():
        rds.create_db_instance(
            DBInstanceIdentifier=name, Engine="mysql", DBInstanceClass="db.t3.micro",
            AllocatedStorage=20, MasterUsername="admin", MasterUserPassword="not-a-secret-1",
            DBSubnetGroupName=made.subnet_group, PubliclyAccessible=publicly)
        made.databases.append(name)


def _rds_public(ec2: Any, rds: Any, seeded: vpc.SeededVpc, made: _Made) -> None:
    _databases(rds, seeded, made, {"audit-private-db": False, "audit-public-db": True})


def _rds_private(ec2: Any, rds: Any, seeded: vpc.SeededVpc, made: _Made) -> None:
    _databases(rds, seeded, made, {"audit-only-db": False})


def _bastion_extra_ingress(ec2: Any, rds: Any, seeded: vpc.SeededVpc, made: _Made) -> None:
    ec2.authorize_security_group_ingress(GroupId=seeded.security_groups["ssh"],
                                         IpPermissions=_world(3389))


def _imdsv1(ec2: Any, rds: Any, seeded: vpc.SeededVpc, made: _Made) -> None:
    ec2.modify_instance_metadata_options(InstanceId=seeded.appserver_id, HttpTokens="optional")


def _web_extra_port(ec2: Any, rds: Any, seeded: vpc.SeededVpc, made: _Made) -> None:
    ec2.authorize_security_group_ingress(GroupId=seeded.security_groups["web"],
                                         IpPermissions=_world(8080))


def _no_eip(ec2: Any, rds: Any, seeded: vpc.SeededVpc, made: _Made) -> None:
    _release(ec2, seeded.eip_allocation_id)


def _large_bastion(ec2: Any, rds: Any, seeded: vpc.SeededVpc, made: _Made) -> None:
    ec2.modify_instance_attribute(InstanceId=seeded.bastion_id,
                                  InstanceType={"Value": "m5.large"})  # it is stopped


def _my_ip(ec2: Any, rds: Any, seeded: vpc.SeededVpc, made: _Made) -> None:
    group = seeded.security_groups["ssh"]
    ec2.revoke_security_group_ingress(GroupId=group, IpPermissions=_world(22))
    cidr, description = MY_IP_CIDR, rule_description(MY_IP_USER, time.time() + 3600)
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
        "IpRanges": [{"CidrIp": cidr, "Description": description}]}])


def _as_seeded(ec2: Any, rds: Any, seeded: vpc.SeededVpc, made: _Made) -> None:
    pass


_BREAKS: dict[str, Callable[[Any, Any, vpc.SeededVpc, _Made], None]] = {
    "seed": _as_seeded, "appserver-world-ssh": _appserver_world_ssh, "rds-public": _rds_public,
    "rds-private": _rds_private, "bastion-extra-ingress": _bastion_extra_ingress,
    "imdsv1": _imdsv1, "web-extra-port": _web_extra_port, "no-eip": _no_eip,
    "large-bastion": _large_bastion, "my-ip": _my_ip,
}


# --- removing it again --------------------------------------------------------------------------


def _release(ec2: Any, allocation_id: str) -> None:
    found = ec2.describe_addresses(Filters=[{"Name": "allocation-id",
                                             "Values": [allocation_id]}])["Addresses"]
    for address in found:
        if address.get("AssociationId"):
            ec2.disassociate_address(AssociationId=address["AssociationId"])
        ec2.release_address(AllocationId=allocation_id)


def _remove(ec2: Any, rds: Any, seeded: vpc.SeededVpc, made: _Made) -> None:
    """Every step is tried; the first failure is raised after the rest ran."""
    groups = [g for name, g in seeded.security_groups.items() if name != "default"]
    steps: list[Callable[[], object]] = [
        *(lambda db=db: rds.delete_db_instance(DBInstanceIdentifier=db, SkipFinalSnapshot=True)
          for db in made.databases),
        *([lambda: rds.delete_db_subnet_group(DBSubnetGroupName=made.subnet_group)]
          if made.subnet_group else []),
        lambda: _release(ec2, seeded.eip_allocation_id),
        lambda: ec2.terminate_instances(InstanceIds=[seeded.bastion_id, seeded.appserver_id]),
        *(lambda g=g: ec2.delete_security_group(GroupId=g) for g in [*made.groups, *groups]),
        *(lambda s=s: ec2.delete_subnet(SubnetId=s)
          for s in (seeded.public_subnet_id, seeded.private_subnet_id)),
        lambda: ec2.delete_vpc(VpcId=seeded.vpc_id),
    ]
    first: Exception | None = None
    for step in steps:
        try:
            step()
        except Exception as exc:  # the rest must still be removed
            log.warning("[sandbox] removing posture %s: %s", seeded.vpc_id, exc)
            first = first or exc
    if first is not None:
        raise first
