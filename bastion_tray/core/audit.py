"""`bastion-tray audit`: the seed's posture (DESIGN.md "Seed posture and cost") as checks. Pure.

adapters/posture.py reads a `Posture` (what EC2 and RDS show about one profile's VPC); each
check here judges it and says what it saw and the command that fixes it. A check whose AWS
describe was refused cannot judge: it warns "could not check: needs <action>" instead.

Security-group rules count by what they admit: a rule open to address ranges (IPv4/IPv6 CIDRs,
prefix lists) is exposure; a rule that admits only other security groups (the default group's
own, "SSH from the bastion's group") is traffic inside the VPC and is never flagged.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bastion_tray.core.posture import Group, Instance, Posture, Rule

PASS, WARN, FAIL = "pass", "warn", "fail"
STATUSES = (PASS, WARN, FAIL)

SSH_PORT = 22
WEB_PORTS = frozenset({80, 443})
#: instance types a bastion that only carries SSH needs at most
SMALL_FAMILIES = frozenset({"t2", "t3", "t3a", "t4g"})
SMALL_SIZES = frozenset({"nano", "micro", "small"})
#: AWS's public IPv4 charge, which an Elastic IP costs also while its instance is stopped
PUBLIC_IPV4_USD_PER_HOUR = 0.005
HOURS_PER_MONTH = 720

DESCRIBE_INSTANCES = "ec2:DescribeInstances"
DESCRIBE_GROUPS = "ec2:DescribeSecurityGroups"
DESCRIBE_ADDRESSES = "ec2:DescribeAddresses"
DESCRIBE_DATABASES = "rds:DescribeDBInstances"
#: every permission audit reads with, in the order the README lists them
IAM_ACTIONS = (DESCRIBE_INSTANCES, DESCRIBE_GROUPS, DESCRIBE_ADDRESSES, DESCRIBE_DATABASES)
_GRAVITON = re.compile(r"\d[a-z]*g")  # m6g, c7gn, r6gd, t4g: arm64 families


# --- the verdicts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    id: str  # stable: scripts match on it
    status: str  # one of STATUSES
    title: str  # what the check wants
    seen: str  # what it found
    fix: str | None = None  # the command(s) that fix it, one per line

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "title": self.title, "seen": self.seen,
                "fix": self.fix}


@dataclass(frozen=True)
class Report:
    profile: str
    vpc_id: str | None
    bastion: str | None  # its label, when it was seen
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in STATUSES}

    def to_json(self) -> dict[str, Any]:
        return {"profile": self.profile, "ok": self.ok, "vpc_id": self.vpc_id,
                "checks": [c.to_json() for c in self.checks], "summary": self.counts()}


Verdict = tuple[str, str, str | None]  # status, seen, fix


@dataclass(frozen=True)
class Spec:
    id: str
    title: str
    needs: tuple[str, ...]  # the IAM actions whose replies it judges
    judge: Callable[[Posture], Verdict]


def audit(posture: Posture) -> Report:
    checks = []
    for spec in SPECS:
        missing = [a for a in spec.needs if a in posture.denied]
        if not missing and DESCRIBE_INSTANCES in spec.needs and posture.bastion is None:
            missing = [DESCRIBE_INSTANCES]
        if missing:
            listed = ", ".join(missing)
            checks.append(Check(spec.id, WARN, spec.title, f"could not check: needs {listed}",
                                f"add {listed} to the IAM policy of these credentials"))
            continue
        status, seen, fix = spec.judge(posture)
        checks.append(Check(spec.id, status, spec.title, seen, fix))
    bastion = posture.bastion.label if posture.bastion else None
    return Report(posture.profile, posture.vpc_id, bastion, tuple(checks))


# --- fixing commands --------------------------------------------------------------------------


def revoke_command(region: str, rule: Rule) -> str:
    base = (f"aws ec2 revoke-security-group-ingress --region {region} "
            f"--group-id {rule.group_id}")
    if rule.source_kind in ("cidr", "group") and (rule.all_traffic
                                                   or rule.protocol in ("tcp", "udp")):
        protocol = "all" if rule.all_traffic else rule.protocol
        port = ("" if rule.all_traffic else f" --port {rule.from_port}"
                if rule.from_port == rule.to_port else f" --port {rule.from_port}-{rule.to_port}")
        source = (f"--cidr {rule.source}" if rule.source_kind == "cidr"
                  else f"--source-group {rule.source}")
        return f"{base} --protocol {protocol}{port} {source}"
    sources = {"cidr": f"IpRanges=[{{CidrIp={rule.source}}}]",
               "cidr6": f"Ipv6Ranges=[{{CidrIpv6={rule.source}}}]",
               "prefix-list": f"PrefixListIds=[{{PrefixListId={rule.source}}}]",
               "group": f"UserIdGroupPairs=[{{GroupId={rule.source}}}]"}
    ports = (f",FromPort={rule.from_port},ToPort={rule.to_port}"
             if rule.from_port is not None and not rule.all_traffic else "")
    permission = f"IpProtocol={rule.protocol}{ports},{sources[rule.source_kind]}"
    return f"{base} --ip-permissions {shlex.quote(permission)}"


def _rule_text(posture: Posture, rule: Rule) -> str:
    return f"{rule.ports} from {rule.source} (group {posture.group_label(rule.group_id)})"


def _listed(texts: Iterable[str]) -> str:
    return "; ".join(dict.fromkeys(texts))


def _commands(lines: Iterable[str]) -> str:
    return "\n".join(dict.fromkeys(lines))


# --- the checks -------------------------------------------------------------------------------


def _exposed(posture: Posture, instance: Instance) -> list[Rule]:
    """The instance's rules open to address ranges, bastion-tray's own excepted."""
    return [r for r in posture.rules_of(instance) if r.from_addresses and not r.app_owned]


def _bastion_ssh_only(p: Posture) -> Verdict:
    assert p.bastion is not None
    rules = _exposed(p, p.bastion)
    extra = [r for r in rules if not r.is_exactly_tcp(p.ssh_ports)]
    if extra:
        return (FAIL, "extra ingress on the bastion: " + _listed(_rule_text(p, r) for r in extra),
                _commands(revoke_command(p.region, r) for r in extra))
    if not rules:
        return PASS, "no rule opens the bastion to an address range", None
    ports = ", ".join(sorted({r.ports for r in rules}))
    return PASS, f"only SSH ({ports}) is open to address ranges", None


def _bastion_ssh_world(p: Posture) -> Verdict:
    assert p.bastion is not None
    rules = [r for r in _exposed(p, p.bastion) if any(r.opens_tcp(n) for n in p.ssh_ports)]
    world = [r for r in rules if r.from_world]
    if not world:
        sources = ", ".join(sorted({r.source for r in rules})) or "no address range"
        return PASS, f"SSH on the bastion is open to {sources}", None
    seen = "SSH on the bastion is open to the world: " + _listed(_rule_text(p, r) for r in world)
    revoke = _commands(revoke_command(p.region, r) for r in world)
    if p.ingress == "my-ip":
        return (WARN, f'{seen}; ingress = "my-ip" has no effect until it is revoked',
                f"revoke the world rule (bastion-tray adds this machine's /32 while in use):\n"
                f"{revoke}")
    return (WARN, seen, f'set ingress = "my-ip" in [profiles.{p.profile}.bastion] (SSH open '
                        "only to this machine's address, only while in use), then revoke the "
                        f"world rule:\n{revoke}")


def _app_rules_expired(p: Posture) -> Verdict:
    """my-ip rules whose `until` has passed: a laptop that vanished (a live daemon revokes its
    own; the next grant or release of anyone's reaps them)."""
    assert p.bastion is not None
    own = [(r, r.owner or ("?", None)) for r in p.rules_of(p.bastion) if r.app_owned]
    expired = [(r, user) for r, (user, until) in own if until is None or until <= p.now]
    if expired:
        seen = "expired bastion-tray rules still open SSH: " + _listed(
            f"{user}'s {_rule_text(p, r)}" for r, user in expired)
        return WARN, seen, _commands(revoke_command(p.region, r) for r, _ in expired)
    if own:
        users = ", ".join(sorted({user for _, (user, _) in own}))
        return PASS, f"{len(own)} live bastion-tray rule(s), of {users}", None
    return PASS, "no bastion-tray rules on the bastion's groups", None


def _appservers_no_world_ssh(p: Posture) -> Verdict:
    assert p.bastion is not None
    if not p.others:
        return PASS, f"no other instances in {p.vpc_id}", None
    seen, fixes = [], []
    for instance in p.others:
        for rule in _exposed(p, instance):
            if not (rule.from_world and rule.opens_tcp(SSH_PORT)):
                continue
            seen.append(f"{instance.label} takes SSH from {rule.source} "
                        f"(group {p.group_label(rule.group_id)})")
            if rule.group_id in p.bastion.group_ids:  # revoking it would close the bastion
                kept = " ".join(g for g in instance.group_ids if g != rule.group_id) \
                    or "sg-…(a group without SSH from the world)"
                fixes.append(f"aws ec2 modify-instance-attribute --region {p.region} "
                             f"--instance-id {instance.instance_id} --groups {kept}")
            else:
                fixes.append(revoke_command(p.region, rule))
    if seen:
        return FAIL, _listed(seen), _commands(fixes)
    return (PASS, f"{len(p.others)} app server(s) in {p.vpc_id}, none takes SSH from "
                  "0.0.0.0/0 or ::/0", None)


def _web_groups(p: Posture) -> list[Group]:
    """Groups named web, and app servers' groups that open 80 or 443 to address ranges."""
    attached = {g for i in p.others for g in i.group_ids}
    return [g for g in p.groups.values() if g.name.lower() == "web" or (
        g.group_id in attached and any(r.from_addresses and (r.opens_tcp(80) or r.opens_tcp(443))
                                       for r in g.rules))]


def _web_only_http(p: Posture) -> Verdict:
    groups = _web_groups(p)
    if not groups:
        return PASS, f"no web group in {p.vpc_id}", None
    extra = [r for g in groups for r in g.rules if r.from_addresses and not r.app_owned
             and not r.is_exactly_tcp(WEB_PORTS)]
    if extra:
        return (FAIL, "a web group opens more than 80/443: "
                + _listed(_rule_text(p, r) for r in extra),
                _commands(revoke_command(p.region, r) for r in extra))
    return PASS, ("only 80/443 open to address ranges in "
                  + ", ".join(g.label for g in groups)), None


def _rds_private(p: Posture) -> Verdict:
    # the VPC's databases, those the profile forwards to, and those RDS places in no VPC at all
    mine = [d for d in p.databases if d.vpc_id == p.vpc_id or d.vpc_id is None
            or (d.address is not None and d.address.lower() in p.forward_hosts)]
    if not mine:
        return PASS, f"no RDS instances in {p.vpc_id}", None
    public = [d for d in mine if d.publicly_accessible]
    if public:
        names = ", ".join(d.identifier for d in public)
        verb = "is" if len(public) == 1 else "are"
        return (FAIL, f"{names} {verb} publicly accessible",
                _commands(f"aws rds modify-db-instance --db-instance-identifier {d.identifier} "
                          f"--no-publicly-accessible --apply-immediately --region {p.region}"
                          for d in public))
    return (PASS, f"{len(mine)} RDS instance(s) in {p.vpc_id}, none publicly accessible: "
                  + ", ".join(d.identifier for d in mine), None)


def _auto_stop(p: Posture) -> Verdict:
    if p.auto_stop:
        return PASS, "auto_stop = true: the bastion stops when idle", None
    return (WARN, f"auto_stop = false in [profiles.{p.profile}.bastion]: the bastion runs until "
                  "someone stops it",
            f"set auto_stop = true in [profiles.{p.profile}.bastion] (or remove the key: "
            "true is the default)")


def _eip_stopped(p: Posture) -> Verdict:
    assert p.bastion is not None
    eip = p.elastic_ip
    if eip is None:
        return PASS, "no Elastic IP on the bastion", None
    if p.bastion.state not in ("stopped", "stopping"):
        return PASS, f"Elastic IP {eip.public_ip} on the {p.bastion.state} bastion", None
    monthly = PUBLIC_IPV4_USD_PER_HOUR * HOURS_PER_MONTH
    release = (f"aws ec2 release-address --region {p.region} --allocation-id "
               f"{eip.allocation_id}")
    if eip.association_id:
        release = (f"aws ec2 disassociate-address --region {p.region} --association-id "
                   f"{eip.association_id} && {release}")
    return (WARN, f"Elastic IP {eip.public_ip} on the stopped bastion costs "
                  f"${PUBLIC_IPV4_USD_PER_HOUR:.3f}/h (~${monthly:.2f}/month) while it stays "
                  "stopped",
            "keep it if something allow-lists that address; otherwise release it (host = "
            f'"auto" then uses the public IP of each start):\n{release}')


def _imdsv2(p: Posture) -> Verdict:
    assert p.bastion is not None
    instances = [p.bastion, *p.others]
    optional = [i for i in instances if i.http_tokens == "optional"]
    unknown = [i for i in instances if i.http_tokens not in ("optional", "required")]
    if optional:
        return (FAIL, "IMDSv1 allowed (HttpTokens optional) on "
                + ", ".join(i.label for i in optional),
                _commands(f"aws ec2 modify-instance-metadata-options --instance-id "
                          f"{i.instance_id} --http-tokens required --region {p.region}"
                          for i in optional))
    if unknown:
        return (WARN, "EC2 reported no HttpTokens for " + ", ".join(i.label for i in unknown),
                None)
    return (PASS, f"HttpTokens required on all {len(instances)} instance(s) (the bastion and "
                  "its VPC's app servers)", None)


def is_small(instance_type: str) -> bool:
    family, _, size = instance_type.partition(".")
    return family in SMALL_FAMILIES and size in SMALL_SIZES


def _bastion_small(p: Posture) -> Verdict:
    assert p.bastion is not None
    kind = p.bastion.instance_type
    if is_small(kind):
        return PASS, f"{kind}", None
    smaller = "t4g.micro" if _GRAVITON.search(kind.partition(".")[0]) else "t3.micro"
    return (WARN, f"{kind}: more than a bastion that only carries SSH needs",
            f"while it is stopped: aws ec2 modify-instance-attribute --region {p.region} "
            f"--instance-id {p.bastion.instance_id} --instance-type Value={smaller}")


_ON_GROUPS = (DESCRIBE_INSTANCES, DESCRIBE_GROUPS)
SPECS = (
    Spec("bastion-ssh-only", "the bastion's security groups open only SSH", _ON_GROUPS,
         _bastion_ssh_only),
    Spec("bastion-ssh-world", "SSH on the bastion is not open to the whole internet",
         _ON_GROUPS, _bastion_ssh_world),
    Spec("app-rules-expired", "no expired bastion-tray (my-ip) rules left open",
         _ON_GROUPS, _app_rules_expired),
    Spec("appservers-no-world-ssh", "app servers take no SSH from 0.0.0.0/0", _ON_GROUPS,
         _appservers_no_world_ssh),
    Spec("web-only-http", "web groups open only 80/443", _ON_GROUPS, _web_only_http),
    Spec("rds-private", "RDS instances are not publicly accessible",
         (DESCRIBE_INSTANCES, DESCRIBE_DATABASES), _rds_private),
    Spec("auto-stop", "auto_stop is on", (), _auto_stop),
    Spec("eip-stopped", "no Elastic IP charged on a stopped bastion",
         (DESCRIBE_INSTANCES, DESCRIBE_ADDRESSES), _eip_stopped),
    Spec("imdsv2", "IMDSv2 required (HttpTokens required)", (DESCRIBE_INSTANCES,), _imdsv2),
    Spec("bastion-small", "the bastion's instance type is small", (DESCRIBE_INSTANCES,),
         _bastion_small),
)
CHECK_IDS = tuple(s.id for s in SPECS)
