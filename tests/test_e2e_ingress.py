"""ingress = "my-ip" end to end (DESIGN.md "Access"): the real daemon and CLI against the
sandbox's moto, sshd and MariaDB. The SSH group holds this machine's /32 rule exactly while the
bastion is in use; a teammate's live rule is never touched, an expired one is reaped; a new
address gets a new rule; a failure to learn the address fails and opens nothing.

The "public address" comes from the sandbox's loopback checkip server: a documentation address
(203.0.113.0/24, 198.51.100.0/24) that only lands in a moto rule — nothing connects to it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bastion_tray.core.ingress import RULE_PREFIX, description, parse_description
from bastion_tray.core.netguard import is_loopback
from bastion_tray.sandbox import Sandbox
from bastion_tray.sandbox.checkip import PublicIpServer
from tests.support.app import App, wait_until

ME = "me@laptop-a"
BOB = "bob@laptop-b"


@pytest.fixture
def checkip() -> Iterator[PublicIpServer]:
    with PublicIpServer("203.0.113.7") as server:
        assert is_loopback("127.0.0.1") and server.url.startswith("http://127.0.0.1:")
        yield server


@pytest.fixture
def ssh_group(fresh_sandbox: Sandbox) -> Iterator[str]:
    """The seed's ssh group; every bastion-tray rule a test leaves is removed after it."""
    group = fresh_sandbox.vpc.security_groups["ssh"]
    yield group
    ec2 = fresh_sandbox.ec2()
    for rule in _rules(fresh_sandbox, group):
        if rule["Description"].startswith(RULE_PREFIX):
            ec2.revoke_security_group_ingress(GroupId=group, IpPermissions=[{
                "IpProtocol": "tcp", "FromPort": rule["FromPort"], "ToPort": rule["ToPort"],
                "IpRanges": [{"CidrIp": rule["CidrIp"]}]}])


def _rules(sandbox: Sandbox, group: str) -> list[dict[str, Any]]:
    reply = sandbox.ec2().describe_security_groups(GroupIds=[group])
    return [{"CidrIp": r["CidrIp"], "Description": r.get("Description", ""),
             "FromPort": p.get("FromPort"), "ToPort": p.get("ToPort")}
            for p in reply["SecurityGroups"][0]["IpPermissions"] for r in p.get("IpRanges", [])]


def _ours(sandbox: Sandbox, group: str, user: str = ME) -> list[dict[str, Any]]:
    return [r for r in _rules(sandbox, group)
            if (parse_description(r["Description"]) or ("",))[0] == user]


def _app(make_app: type[App], checkip: PublicIpServer, **settings: Any) -> App:
    return make_app(extra_bastion={"ingress": "my-ip"},
                    extra_settings={"public_ip_url": checkip.url, "user_id": ME, **settings})


def _add_rule(sandbox: Sandbox, group: str, cidr: str, user: str, until: float) -> None:
    sandbox.ec2().authorize_security_group_ingress(GroupId=group, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": sandbox.bastion_port, "ToPort": sandbox.bastion_port,
        "IpRanges": [{"CidrIp": cidr, "Description": description(user, until)}]}])


def test_the_ssh_group_holds_my_rule_exactly_while_in_use(
        make_app: type[App], checkip: PublicIpServer, ssh_group: str) -> None:
    import time

    app = _app(make_app, checkip)
    sandbox = app.sandbox
    _add_rule(sandbox, ssh_group, "198.51.100.20/32", BOB, time.time() + 3600)  # live
    _add_rule(sandbox, ssh_group, "198.51.100.30/32", "carol@old", time.time() - 600)  # lapsed
    assert _ours(sandbox, ssh_group) == []

    app.cli("up", "foo", check=True)
    mine = _ours(sandbox, ssh_group)
    assert [r["CidrIp"] for r in mine] == ["203.0.113.7/32"], _rules(sandbox, ssh_group)
    assert mine[0]["FromPort"] == mine[0]["ToPort"] == sandbox.bastion_port
    until = parse_description(mine[0]["Description"])[1]  # type: ignore[index]
    assert until is not None and time.time() < until <= time.time() + 600 + 5
    cidrs = [r["CidrIp"] for r in _rules(sandbox, ssh_group)]
    assert "198.51.100.20/32" in cidrs, "a teammate's live rule is never touched"
    assert "198.51.100.30/32" not in cidrs, "an expired bastion-tray rule is reaped"
    assert "0.0.0.0/0" in cidrs  # the seed's own rule: ingress = "my-ip" adds, audit warns
    ingress = app.status()["bastion"]["ingress"]
    assert ingress["mode"] == "my-ip" and ingress["address"] == "203.0.113.7/32"
    assert ingress["until"] and ingress["error"] is None

    app.cli("stop", "foo", check=True)
    assert _ours(sandbox, ssh_group) == [], "revoked when done"
    assert "198.51.100.20/32" in [r["CidrIp"] for r in _rules(sandbox, ssh_group)]
    assert app.status()["bastion"]["ingress"]["address"] is None


def test_a_new_address_gets_a_new_rule_and_the_old_one_goes(
        make_app: type[App], checkip: PublicIpServer, ssh_group: str) -> None:
    app = _app(make_app, checkip, lease_ttl="15s")  # renewed (and the address re-learnt) every 5 s
    app.cli("up", "foo", check=True)
    assert [r["CidrIp"] for r in _ours(app.sandbox, ssh_group)] == ["203.0.113.7/32"]
    checkip.answer = "198.51.100.9"  # the laptop is on another network now
    wait_until(lambda: [r["CidrIp"] for r in _ours(app.sandbox, ssh_group)]
               == ["198.51.100.9/32"], 20, "the rule to follow the new address")
    assert app.status()["bastion"]["ingress"]["address"] == "198.51.100.9/32"
    assert "SSH port now 198.51.100.9/32" in app.log()


def test_no_address_no_rule_and_no_connection(
        make_app: type[App], checkip: PublicIpServer, ssh_group: str) -> None:
    checkip.answer = "<html>captive portal</html>"
    app = _app(make_app, checkip)
    before = _rules(app.sandbox, ssh_group)
    proc = app.cli("up", "foo")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "could not learn this machine's public address" in proc.stderr
    assert "never falls back to 0.0.0.0/0" in proc.stderr
    assert _rules(app.sandbox, ssh_group) == before
    assert app.status()["bastion"]["ssh"] == "disconnected"


def test_the_default_public_ip_url_is_refused_under_loopback_only(
        make_app: type[App], ssh_group: str) -> None:
    app = make_app(extra_bastion={"ingress": "my-ip"})
    proc = app.cli("up", "foo")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "checkip.amazonaws.com" in proc.stderr
    assert _ours(app.sandbox, ssh_group, user=app.status()["user_id"]) == []
