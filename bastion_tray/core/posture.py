"""What `audit` judges (core/audit.py): one profile's bastion, its VPC, as AWS showed them. Pure.

adapters/posture.py fills it in from read-only describes; tests build it by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bastion_tray.core.ingress import parse_description

WORLD = frozenset({"0.0.0.0/0", "::/0"})


@dataclass(frozen=True)
class Rule:
    """One source of one ingress permission (AWS lists several sources per permission)."""

    group_id: str
    protocol: str  # "tcp", "udp", "icmp", "-1" (all traffic), or a protocol number
    from_port: int | None  # None for all traffic
    to_port: int | None
    source: str  # "0.0.0.0/0", "2001:db8::/32", "pl-…", "sg-…"
    source_kind: str  # "cidr", "cidr6", "prefix-list" or "group"
    description: str = ""

    @property
    def all_traffic(self) -> bool:
        return self.protocol in ("-1", "all")

    @property
    def from_addresses(self) -> bool:
        return self.source_kind != "group"

    @property
    def from_world(self) -> bool:
        return self.source in WORLD

    @property
    def app_owned(self) -> bool:
        """bastion-tray's own temporary /32 rule (ingress = "my-ip"): its description and its
        shape both — a world rule described "bastion-tray:…" is exposure like any other."""
        return (self.owner is not None and self.source_kind == "cidr"
                and self.source.endswith("/32"))

    @property
    def owner(self) -> tuple[str, float | None] | None:
        """(user_id, until) of a rule described `bastion-tray:<user>:until=<ISO>`."""
        return parse_description(self.description)

    def opens_tcp(self, port: int) -> bool:
        if self.all_traffic:
            return True
        return (self.protocol in ("tcp", "6") and self.from_port is not None
                and self.to_port is not None and self.from_port <= port <= self.to_port)

    def is_exactly_tcp(self, ports: Iterable[int]) -> bool:
        """A tcp rule for one port, and that port one of `ports`."""
        return (self.protocol in ("tcp", "6") and self.from_port == self.to_port
                and self.from_port in set(ports))

    @property
    def ports(self) -> str:
        """"tcp 22", "tcp 8000-8080", "all traffic", "icmp"."""
        if self.all_traffic:
            return "all traffic"
        if self.from_port is None or (self.protocol.startswith("icmp") and self.from_port < 0):
            return self.protocol
        span = (str(self.from_port) if self.from_port == self.to_port
                else f"{self.from_port}-{self.to_port}")
        return f"{self.protocol} {span}"


@dataclass(frozen=True)
class Group:
    group_id: str
    name: str
    rules: tuple[Rule, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.name} {self.group_id}"


@dataclass(frozen=True)
class Instance:
    instance_id: str
    name: str | None  # the Name tag
    state: str  # EC2's
    instance_type: str
    group_ids: tuple[str, ...] = ()
    http_tokens: str | None = None  # MetadataOptions.HttpTokens: "required" is IMDSv2 only

    @property
    def label(self) -> str:
        return f"{self.name} ({self.instance_id})" if self.name else self.instance_id


@dataclass(frozen=True)
class ElasticIp:
    public_ip: str
    allocation_id: str
    association_id: str | None = None


@dataclass(frozen=True)
class Database:
    identifier: str  # DBInstanceIdentifier
    publicly_accessible: bool
    vpc_id: str | None  # DBSubnetGroup.VpcId; None when RDS does not say
    address: str | None = None  # Endpoint.Address


@dataclass(frozen=True)
class Posture:
    """What AWS showed about one profile: its bastion, the bastion's VPC, the config's keys."""

    profile: str
    region: str
    ssh_ports: frozenset[int]  # 22 and the profile's port
    auto_stop: bool
    ingress: str  # the profile's ingress mode, "open" or "my-ip"
    bastion: Instance | None  # None only when DescribeInstances was refused
    vpc_id: str | None = None
    others: tuple[Instance, ...] = ()  # the VPC's other live instances: the app servers
    groups: Mapping[str, Group] = field(default_factory=dict)  # the VPC's groups by id
    elastic_ip: ElasticIp | None = None  # the bastion's
    databases: tuple[Database, ...] = ()  # every RDS DB instance of the region
    denied: frozenset[str] = frozenset()  # IAM actions AWS refused ("ec2:DescribeAddresses")
    now: float = 0.0  # when AWS was asked (epoch seconds): judges the my-ip rules' until
    forward_hosts: frozenset[str] = frozenset()  # the profile's forwards' remote_host values

    def rules_of(self, instance: Instance) -> list[Rule]:
        return [r for g in instance.group_ids if g in self.groups for r in self.groups[g].rules]

    def group_label(self, group_id: str) -> str:
        group = self.groups.get(group_id)
        return group.label if group else group_id
