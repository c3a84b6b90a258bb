"""ingress = "my-ip" on EC2: our /32 rule on the bastion's SSH security group.

`grant` learns this machine's public address, then adds or renews our rule (its description
carries the until), revokes ours for any other address and reaps anyone's expired
bastion-tray rules; `release` revokes ours. What to do is decided in core/ingress.py; this only
reads the group and carries the plan out. Thread-safe (one client, boto3's own locking).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from bastion_tray.adapters.cloud import AwsHandle, SessionFactory
from bastion_tray.adapters.cloud_errors import translate
from bastion_tray.adapters.public_ip import learn_public_ip
from bastion_tray.core.config import Profile
from bastion_tray.core.errors import CloudError
from bastion_tray.core.ingress import Group, Rule, description, pick_group, plan, world_open

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Granted:
    address: str  # the /32 that is open to us now
    covered_by: str | None  # someone else's live rule opens it (we added none)
    group_id: str


class LocalClaims:
    """Which of this daemon's profiles hold our rule on a (group, port): two profiles whose
    bastions share a security group and port share one rule (same user, same address), and a
    release revokes it only when the other no longer holds it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[str, int], set[str]] = {}

    def hold(self, group_id: str, port: int, profile: str) -> None:
        with self._lock:
            self._held.setdefault((group_id, port), set()).add(profile)

    def others(self, group_id: str, port: int, profile: str) -> bool:
        """Drop `profile`'s hold; whether another profile still holds it."""
        with self._lock:
            holders = self._held.get((group_id, port), set())
            holders.discard(profile)
            return bool(holders)


class SshIngress(AwsHandle):
    SERVICE, LABEL = "ec2", "EC2"

    def __init__(self, profile: Profile, user_id: str, public_ip_url: str,
                 session_factory: SessionFactory | None = None,
                 clock: Callable[[], float] = time.time,
                 claims: LocalClaims | None = None) -> None:
        super().__init__(profile, session_factory)
        self._user_id, self._url, self._clock = user_id, public_ip_url, clock
        self._claims = claims or LocalClaims()
        self._group_id: str | None = None  # picked once: the group never moves under us
        self._warned_world = False

    def grant(self, instance_id: str, until: float) -> Granted:
        address = learn_public_ip(self._url)
        group = self._group(instance_id)
        port = self._profile.bastion.port
        for _ in range(2):  # a teammate behind the same address may add it between our steps
            wanted = plan(group.rules, self._user_id, address, port, self._clock())
            try:
                if wanted.renew is not None:
                    self._renew(group.group_id, wanted.renew, until)
                elif wanted.authorize:
                    self._authorize(group.group_id, address, port, until)
            except _Duplicate:
                group = self._read(group.group_id)
                continue
            self._revoke_all(group.group_id, wanted.revoke)
            self._claims.hold(group.group_id, port, self._profile.name)
            if world_open(group, port) and not self._warned_world:
                self._warned_world = True
                log.warning("%s %s still opens port %d to 0.0.0.0/0: ingress = \"my-ip\" "
                            "narrows nothing until that rule is revoked (see `bastion-tray "
                            "audit %s`)", self._ctx(), group.group_id, port, self._profile.name)
            return Granted(address, wanted.covered_by, group.group_id)
        raise CloudError(f"could not open the SSH port to {address} on {group.group_id}: the "
                         "rule kept changing under us", hint="try again")

    def release(self, instance_id: str | None) -> None:
        if instance_id is None and self._group_id is None:
            return  # we never learnt the group: we never added a rule through it
        group = self._read(self._group_id) if self._group_id else self._group(instance_id or "")
        port = self._profile.bastion.port
        shared = self._claims.others(group.group_id, port, self._profile.name)
        if shared:
            log.info("%s our SSH rule stays: another profile of this daemon uses it",
                     self._ctx())
        wanted = plan(group.rules, self._user_id, None, port, self._clock(), keep_ours=shared)
        self._revoke_all(group.group_id, wanted.revoke)

    # --- reading --------------------------------------------------------------------------

    def _group(self, instance_id: str) -> Group:
        if self._group_id is not None:
            return self._read(self._group_id)
        reply = self._call("DescribeInstances", instance_id, lambda ec2: ec2.describe_instances(
            InstanceIds=[instance_id]))
        ids = [str(g["GroupId"]) for r in reply.get("Reservations", [])
               for i in r.get("Instances", []) for g in i.get("SecurityGroups", [])]
        groups = self._read_many(ids, instance_id) if ids else ()
        picked = pick_group(groups, self._profile.bastion.port,
                            self._profile.bastion.ingress_group)
        if isinstance(picked, str):
            raise CloudError(f"ingress = \"my-ip\": {picked}",
                             hint=f"[profiles.{self._profile.name}.bastion] ingress_group")
        self._group_id = picked.group_id
        log.info("%s SSH rules go on %s (%s)", self._ctx(), picked.group_id, picked.name)
        return picked

    def _read(self, group_id: str) -> Group:
        found = self._read_many([group_id], group_id)
        if not found:
            raise CloudError(f"security group {group_id} is gone",
                             hint="check the bastion's security groups and ingress_group")
        return found[0]

    def _read_many(self, group_ids: list[str], target: str) -> tuple[Group, ...]:
        reply = self._call("DescribeSecurityGroups", target,
                           lambda ec2: ec2.describe_security_groups(GroupIds=group_ids))
        return tuple(_group(each) for each in reply.get("SecurityGroups", []))

    # --- writing --------------------------------------------------------------------------

    def _authorize(self, group_id: str, cidr: str, port: int, until: float) -> None:
        permission = {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "IpRanges": [
            {"CidrIp": cidr, "Description": description(self._user_id, until)}]}
        self._call("AuthorizeSecurityGroupIngress", group_id,
                   lambda ec2: ec2.authorize_security_group_ingress(
                       GroupId=group_id, IpPermissions=[permission]), duplicate_ok=True)
        log.info("%s SSH rule added on %s: %s, port %d", self._ctx(), group_id, cidr, port)

    def _renew(self, group_id: str, rule: Rule, until: float) -> None:
        permission = _permission(rule, description(self._user_id, until))
        self._call("UpdateSecurityGroupRuleDescriptionsIngress", group_id,
                   lambda ec2: ec2.update_security_group_rule_descriptions_ingress(
                       GroupId=group_id, IpPermissions=[permission]))
        log.debug("%s SSH rule %s renewed", self._ctx(), rule.cidr)

    def _revoke_all(self, group_id: str, rules: tuple[Rule, ...]) -> None:
        for rule in rules:
            self._call("RevokeSecurityGroupIngress", group_id,
                       lambda ec2, rule=rule: ec2.revoke_security_group_ingress(  # type: ignore[misc]
                           GroupId=group_id, IpPermissions=[_permission(rule, None)]))
            owner = rule.owner
            whose = "ours" if owner and owner[0] == self._user_id else "expired"
            log.info("%s SSH rule revoked on %s: %s (%s)", self._ctx(), group_id, rule.cidr,
                     whose if owner else "?")

    def _call(self, action: str, target: str, call: Callable[[Any], T], *,
              duplicate_ok: bool = False) -> T:
        try:
            return call(self._service_client())
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if duplicate_ok and code == "InvalidPermission.Duplicate":
                raise _Duplicate() from None
            raise translate(exc, action, self._profile, subject=target) from exc
        except BotoCoreError as exc:
            raise translate(exc, action, self._profile, subject=target) from exc

    def _ctx(self) -> str:
        return f"[profile={self._profile.name} ingress=my-ip]"


class _Duplicate(Exception):
    pass


def _group(raw: dict[str, Any]) -> Group:
    rules = []
    for perm in raw.get("IpPermissions", []) or []:
        for each in perm.get("IpRanges", []) or []:
            rules.append(Rule(str(perm.get("IpProtocol", "")), perm.get("FromPort"),
                              perm.get("ToPort"), str(each.get("CidrIp", "")),
                              str(each.get("Description") or "")))
    return Group(str(raw.get("GroupId", "")), str(raw.get("GroupName", "")), tuple(rules))


def _permission(rule: Rule, text: str | None) -> dict[str, Any]:
    ip_range: dict[str, Any] = {"CidrIp": rule.cidr}
    if text is not None:
        ip_range["Description"] = text
    permission: dict[str, Any] = {"IpProtocol": rule.protocol, "IpRanges": [ip_range]}
    if rule.protocol != "-1" and rule.from_port is not None:
        permission.update(FromPort=rule.from_port, ToPort=rule.to_port)
    return permission
