"""adapters/ingress.py against the sandbox's moto: two profiles of one daemon whose bastions
share the SSH group share our one rule, and a release keeps it while the other still holds it;
an unreadable or wide "bastion-tray:" rule is nobody's to reap."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from bastion_tray.adapters.ingress import LocalClaims, SshIngress
from bastion_tray.core.config import BastionConfig, Profile
from bastion_tray.sandbox import Sandbox
from bastion_tray.sandbox.checkip import PublicIpServer
from tests.test_cloud import REGION, use_aws_env

ME = "me@laptop-a"


@pytest.fixture
def ssh_group(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    use_aws_env(monkeypatch, sandbox.env)
    group = sandbox.vpc.security_groups["ssh"]
    before = _cidrs(sandbox, group)
    yield group
    ec2 = sandbox.ec2()
    for perm in _perms(sandbox, group):
        for r in perm.get("IpRanges", []):
            if r["CidrIp"] not in before:
                ec2.revoke_security_group_ingress(GroupId=group, IpPermissions=[{
                    "IpProtocol": perm["IpProtocol"], "FromPort": perm.get("FromPort"),
                    "ToPort": perm.get("ToPort"), "IpRanges": [{"CidrIp": r["CidrIp"]}]}])


def _perms(sandbox: Sandbox, group: str) -> list[dict[str, Any]]:
    reply = sandbox.ec2().describe_security_groups(GroupIds=[group])
    return list(reply["SecurityGroups"][0]["IpPermissions"])


def _cidrs(sandbox: Sandbox, group: str) -> list[str]:
    return sorted(r["CidrIp"] for p in _perms(sandbox, group) for r in p.get("IpRanges", []))


def _profile(sandbox: Sandbox, name: str) -> Profile:
    bastion = BastionConfig(instance_id=sandbox.bastion_instance_id, name=None, user="ec2-user",
                            identity_file=None, port=sandbox.bastion_port, ingress="my-ip")
    return Profile(name=name, region=REGION, aws_profile=None, bastion=bastion)


def test_two_profiles_on_one_group_share_our_rule_until_the_last_lets_go(
        sandbox: Sandbox, ssh_group: str) -> None:
    claims = LocalClaims()
    with PublicIpServer("203.0.113.7") as checkip:
        a = SshIngress(_profile(sandbox, "foo"), ME, checkip.url, claims=claims)
        b = SshIngress(_profile(sandbox, "bar"), ME, checkip.url, claims=claims)
        until = time.time() + 600
        assert a.grant(sandbox.bastion_instance_id, until).address == "203.0.113.7/32"
        assert b.grant(sandbox.bastion_instance_id, until).group_id == ssh_group
        assert _cidrs(sandbox, ssh_group).count("203.0.113.7/32") == 1
        a.release(sandbox.bastion_instance_id)
        assert "203.0.113.7/32" in _cidrs(sandbox, ssh_group), "bar still uses it"
        b.release(sandbox.bastion_instance_id)
        assert "203.0.113.7/32" not in _cidrs(sandbox, ssh_group)


def test_an_odd_bastion_tray_rule_is_nobodys_to_reap(sandbox: Sandbox, ssh_group: str) -> None:
    ec2 = sandbox.ec2()
    ec2.authorize_security_group_ingress(GroupId=ssh_group, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
        "IpRanges": [{"CidrIp": "198.51.100.21/32", "Description": "bastion-tray:ops:until=never"},
                     {"CidrIp": "198.51.100.0/24",
                      "Description": "bastion-tray:ops:until=2020-01-01T00:00:00Z"}]}])
    with PublicIpServer("203.0.113.7") as checkip:
        ingress = SshIngress(_profile(sandbox, "foo"), ME, checkip.url)
        ingress.grant(sandbox.bastion_instance_id, time.time() + 600)
        ingress.release(sandbox.bastion_instance_id)
    cidrs = _cidrs(sandbox, ssh_group)
    assert "198.51.100.21/32" in cidrs and "198.51.100.0/24" in cidrs
    assert "203.0.113.7/32" not in cidrs
