"""Seed moto with the VPC the product expects: a stopped bastion with an Elastic IP, an app server.

Both instances are launched in a subnet on purpose: moto gives an instance launched without one
a 54.x public address, which nothing in a sandbox may ever connect to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bastion_tray.sandbox.errors import SandboxError
from bastion_tray.sandbox.net import require_loopback, usable_host_address

log = logging.getLogger(__name__)

# one of moto's built-in AMIs (Amazon Linux); any image moto knows will do
IMAGE_ID = "ami-12c6146b"
INSTANCE_TYPE = "t3.micro"
BASTION_NAME = "foo-bastion"
APPSERVER_NAME = "foo-appserver"
EIP_TRIES = 20


@dataclass(frozen=True)
class SeededVpc:
    vpc_id: str
    public_subnet_id: str  # 10.0.0.0/24: the bastion
    private_subnet_id: str  # 10.0.1.0/24: the app server
    security_groups: dict[str, str]  # name → id: default, web, ssh
    bastion_id: str  # stopped after seeding
    appserver_id: str  # running
    eip: str  # the bastion's Elastic IP: a 127.x.y.z, checked
    eip_allocation_id: str
    bastion_port: int  # the port sshd will listen on at `eip`


def _group(ec2: Any, vpc_id: str, name: str, port: int) -> str:
    group_id = str(ec2.create_security_group(GroupName=name, Description=f"{name} only",
                                             VpcId=vpc_id)["GroupId"])
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": port, "ToPort": port,
        "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    return group_id


def _launch(ec2: Any, name: str, subnet_id: str, group_ids: list[str]) -> str:
    reply = ec2.run_instances(
        ImageId=IMAGE_ID, InstanceType=INSTANCE_TYPE, MinCount=1, MaxCount=1,
        SubnetId=subnet_id, SecurityGroupIds=group_ids,
        # IMDSv2 only, as the seed should be (`audit`'s imdsv2 check); moto's default is optional
        MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
        TagSpecifications=[{"ResourceType": "instance",
                            "Tags": [{"Key": "Name", "Value": name}]}])
    return str(reply["Instances"][0]["InstanceId"])


def allocate_loopback_eip(ec2: Any, port_for: Callable[[str], int | None]) -> tuple[str, str, int]:
    """Allocate Elastic IPs until one is a usable 127.x.y.z whose port can be bound.

    `port_for(address)` returns the port sshd would listen on there, or None if it cannot bind.
    Returns (address, allocation id, port); rejected addresses are released again.
    """
    for _ in range(EIP_TRIES):
        reply = ec2.allocate_address(Domain="vpc")
        address, allocation = str(reply["PublicIp"]), str(reply["AllocationId"])
        port = port_for(address) if usable_host_address(address) else None
        if port is not None:
            return require_loopback(address, "Elastic IP"), allocation, port
        log.debug("[sandbox] Elastic IP %s not usable here; allocating another", address)
        ec2.release_address(AllocationId=allocation)
    raise SandboxError(f"no usable loopback Elastic IP from moto in {EIP_TRIES} allocations")


def seed_vpc(ec2: Any, port_for: Callable[[str], int | None], *,
             names: tuple[str, str] = (BASTION_NAME, APPSERVER_NAME)) -> SeededVpc:
    """`names`: the bastion's and the app server's Name tags (another VPC in the same moto
    needs its own: Name lookups must stay unique)."""
    vpc_id = str(ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"])
    public = str(ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"])
    private = str(ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"])
    default = ec2.describe_security_groups(Filters=[
        {"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": ["default"]}])
    groups = {"default": str(default["SecurityGroups"][0]["GroupId"]),
              "web": _group(ec2, vpc_id, "web", 80),
              "ssh": _group(ec2, vpc_id, "ssh", 22)}

    bastion = _launch(ec2, names[0], public, [groups["default"], groups["ssh"]])
    appserver = _launch(ec2, names[1], private, [groups["default"], groups["web"]])
    eip, allocation, port = allocate_loopback_eip(ec2, port_for)
    ec2.associate_address(InstanceId=bastion, AllocationId=allocation)
    ec2.stop_instances(InstanceIds=[bastion])
    log.info("[sandbox] vpc=%s bastion=%s eip=%s:%d appserver=%s", vpc_id, bastion, eip, port,
             appserver)
    return SeededVpc(vpc_id, public, private, groups, bastion, appserver, eip, allocation, port)
