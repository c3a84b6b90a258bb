"""core/audit.py on hand-built postures: every check's pass, warn and fail, and its fix."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bastion_tray.core.audit import (
    CHECK_IDS,
    FAIL,
    IAM_ACTIONS,
    PASS,
    WARN,
    Check,
    Report,
    audit,
    is_small,
    revoke_command,
)
from bastion_tray.core.posture import Database, ElasticIp, Group, Instance, Posture, Rule

R = "ap-northeast-1"
VPC = "vpc-1"
SSH, WEB, DEFAULT = "sg-ssh", "sg-web", "sg-default"


def rule(group: str, port: int | None, source: str = "0.0.0.0/0", *, protocol: str = "tcp",
         to: int | None = None, kind: str = "cidr", description: str = "") -> Rule:
    return Rule(group, protocol, port, port if to is None else to, source, kind, description)


def seed(**changes: object) -> Posture:
    """The seed's posture: SSH only on the bastion (world), web 80, an EIP on it, stopped."""
    groups = {
        DEFAULT: Group(DEFAULT, "default", (rule(DEFAULT, None, DEFAULT, protocol="-1",
                                                 kind="group"),)),
        SSH: Group(SSH, "ssh", (rule(SSH, 22),)),
        WEB: Group(WEB, "web", (rule(WEB, 80),)),
    }
    posture = Posture(
        profile="foo", region=R, ssh_ports=frozenset({22, 40022}), auto_stop=True,
        ingress="open",
        bastion=Instance("i-b", "foo-bastion", "stopped", "t3.micro", (DEFAULT, SSH),
                         "required"),
        vpc_id=VPC,
        others=(Instance("i-a", "foo-appserver", "running", "t3.micro", (DEFAULT, WEB),
                         "required"),),
        groups=groups, elastic_ip=ElasticIp("203.0.113.10", "eipalloc-1", "eipassoc-1"),
        databases=(Database("foo-db", False, VPC),))
    return replace(posture, **changes)  # type: ignore[arg-type]


def check(posture: Posture, check_id: str) -> Check:
    return next(c for c in audit(posture).checks if c.id == check_id)


def with_rules(posture: Posture, group: str, *rules: Rule) -> Posture:
    old = posture.groups[group]
    return replace(posture, groups={**posture.groups,
                                    group: replace(old, rules=old.rules + rules)})


def test_the_seed_passes_with_two_warnings_and_every_check_has_a_stable_id() -> None:
    report = audit(seed())
    assert [c.id for c in report.checks] == list(CHECK_IDS) == [
        "bastion-ssh-only", "bastion-ssh-world", "app-rules-expired", "appservers-no-world-ssh",
        "web-only-http",
        "rds-private", "auto-stop", "eip-stopped", "imdsv2", "bastion-small"]
    statuses = {c.id: c.status for c in report.checks}
    assert statuses.pop("bastion-ssh-world") == WARN
    assert statuses.pop("eip-stopped") == WARN
    assert set(statuses.values()) == {PASS}
    assert report.ok and report.exit_code == 0
    assert report.counts() == {"pass": 8, "warn": 2, "fail": 0}
    assert all(c.fix is None for c in report.checks if c.status == PASS)


def test_extra_ingress_on_the_bastion_fails_with_its_revoke_command() -> None:
    bad = with_rules(seed(), SSH, rule(SSH, 3389))
    found = check(bad, "bastion-ssh-only")
    assert found.status == FAIL
    assert found.seen == "extra ingress on the bastion: tcp 3389 from 0.0.0.0/0 (group ssh sg-ssh)"
    assert found.fix == ("aws ec2 revoke-security-group-ingress --region ap-northeast-1 "
                         "--group-id sg-ssh --protocol tcp --port 3389 --cidr 0.0.0.0/0")
    assert audit(bad).exit_code == 1


@pytest.mark.parametrize("extra", [
    rule(SSH, 20, to=25),  # a range around 22 opens more than SSH
    rule(SSH, None, protocol="-1"),
    rule(SSH, 53, protocol="udp"),
    rule(SSH, 3389, "2001:db8::/32", kind="cidr6"),
])
def test_anything_but_the_ssh_port_from_addresses_is_extra(extra: Rule) -> None:
    assert check(with_rules(seed(), SSH, extra), "bastion-ssh-only").status == FAIL


def test_the_profile_port_counts_as_ssh_and_group_sources_and_own_rules_are_not_extra() -> None:
    ok = with_rules(seed(), SSH, rule(SSH, 40022, "198.51.100.0/24"),
                    rule(SSH, 5432, "sg-app", kind="group"),
                    rule(SSH, 2222, "198.51.100.9/32",
                         description="bastion-tray:bob@x:until=2026-01-01T00:00:00Z"))
    found = check(ok, "bastion-ssh-only")
    assert found.status == PASS, found.seen
    assert found.seen == "only SSH (tcp 22, tcp 40022) is open to address ranges"


def test_world_ssh_on_the_bastion_warns_and_suggests_my_ip() -> None:
    found = check(seed(), "bastion-ssh-world")
    assert found.status == WARN
    assert "open to the world: tcp 22 from 0.0.0.0/0 (group ssh sg-ssh)" in found.seen
    assert found.fix is not None
    assert found.fix.startswith('set ingress = "my-ip" in [profiles.foo.bastion]')
    assert found.fix.splitlines()[-1] == (
        "aws ec2 revoke-security-group-ingress --region ap-northeast-1 --group-id sg-ssh "
        "--protocol tcp --port 22 --cidr 0.0.0.0/0")


def test_world_ssh_with_my_ip_configured_says_it_has_no_effect_until_revoked() -> None:
    found = check(seed(ingress="my-ip"), "bastion-ssh-world")
    assert found.status == WARN
    assert 'ingress = "my-ip" has no effect until it is revoked' in found.seen
    assert found.fix is not None and "set ingress" not in found.fix
    assert "revoke-security-group-ingress" in found.fix


def test_ipv6_world_ssh_gets_an_ip_permissions_revoke() -> None:
    posture = with_rules(seed(), SSH, rule(SSH, 22, "::/0", kind="cidr6"))
    found = check(posture, "bastion-ssh-world")
    assert found.fix is not None
    assert ("--ip-permissions 'IpProtocol=tcp,FromPort=22,ToPort=22,"
            "Ipv6Ranges=[{CidrIpv6=::/0}]'") in found.fix


def test_ssh_only_from_my_ip_rules_passes_the_world_check() -> None:
    groups = {**seed().groups, SSH: Group(SSH, "ssh", (
        rule(SSH, 22, "203.0.113.7/32", description="bastion-tray:a@b:until=x"),))}
    found = check(seed(groups=groups, ingress="my-ip"), "bastion-ssh-world")
    assert found.status == PASS
    assert found.seen == "SSH on the bastion is open to no address range"


def test_an_app_server_with_world_ssh_fails() -> None:
    legacy = Group("sg-legacy", "legacy-ssh", (rule("sg-legacy", 22),))
    app = replace(seed().others[0], group_ids=(DEFAULT, WEB, "sg-legacy"))
    bad = seed(others=(app,), groups={**seed().groups, "sg-legacy": legacy})
    found = check(bad, "appservers-no-world-ssh")
    assert found.status == FAIL
    assert found.seen == ("foo-appserver (i-a) takes SSH from 0.0.0.0/0 "
                          "(group legacy-ssh sg-legacy)")
    assert found.fix == ("aws ec2 revoke-security-group-ingress --region ap-northeast-1 "
                         "--group-id sg-legacy --protocol tcp --port 22 --cidr 0.0.0.0/0")


def test_an_app_server_in_the_bastions_ssh_group_is_moved_out_not_revoked() -> None:
    app = replace(seed().others[0], group_ids=(DEFAULT, WEB, SSH))
    found = check(seed(others=(app,)), "appservers-no-world-ssh")
    assert found.status == FAIL
    assert found.fix == ("aws ec2 modify-instance-attribute --region ap-northeast-1 "
                         "--instance-id i-a --groups sg-default sg-web")


def test_ssh_to_app_servers_from_the_bastion_group_or_private_ranges_is_fine() -> None:
    ok = with_rules(seed(), WEB, rule(WEB, 22, SSH, kind="group"))
    ok = with_rules(ok, DEFAULT, rule(DEFAULT, 22, "10.0.0.0/16"))
    assert check(ok, "appservers-no-world-ssh").status == PASS
    assert check(seed(others=()), "appservers-no-world-ssh").seen == "no other instances in vpc-1"


def test_the_web_group_opening_more_than_80_443_fails() -> None:
    assert check(with_rules(seed(), WEB, rule(WEB, 443)), "web-only-http").status == PASS
    found = check(with_rules(seed(), WEB, rule(WEB, 8080)), "web-only-http")
    assert found.status == FAIL
    assert found.seen == "a web group opens more than 80/443: tcp 8080 from 0.0.0.0/0 (group " \
                         "web sg-web)"
    assert found.fix is not None and "--port 8080 --cidr 0.0.0.0/0" in found.fix
    # a range 80-443 opens everything between
    assert check(with_rules(seed(), WEB, rule(WEB, 80, to=443)), "web-only-http").status == FAIL


def test_an_app_servers_group_that_opens_443_is_judged_as_a_web_group() -> None:
    front = Group("sg-front", "front", (rule("sg-front", 443), rule("sg-front", 9000)))
    app = replace(seed().others[0], group_ids=(DEFAULT, "sg-front"))
    groups = {k: v for k, v in seed().groups.items() if k != WEB} | {"sg-front": front}
    found = check(seed(others=(app,), groups=groups), "web-only-http")
    assert found.status == FAIL and "tcp 9000" in found.seen
    no_web = check(seed(groups={k: v for k, v in seed().groups.items() if k != WEB}),
                   "web-only-http")
    assert (no_web.status, no_web.seen) == (PASS, "no web group in vpc-1")


def test_a_public_rds_in_the_vpc_fails_and_one_elsewhere_is_not_looked_at() -> None:
    dbs = (Database("foo-db", True, VPC), Database("other-db", True, "vpc-2"),
           Database("bar-db", False, VPC))
    found = check(seed(databases=dbs), "rds-private")
    assert (found.status, found.seen) == (FAIL, "foo-db is publicly accessible")
    assert found.fix == ("aws rds modify-db-instance --db-instance-identifier foo-db "
                         "--no-publicly-accessible --apply-immediately --region ap-northeast-1")
    none = check(seed(databases=(Database("other-db", True, "vpc-2"),)), "rds-private")
    assert (none.status, none.seen) == (PASS, "no RDS instances in vpc-1")


def test_a_public_rds_in_no_vpc_or_behind_a_forward_is_judged_too() -> None:
    nowhere = Database("loose-db", True, None)  # RDS placed it in no subnet group
    found = check(seed(databases=(nowhere,)), "rds-private")
    assert (found.status, found.seen) == (FAIL, "loose-db is publicly accessible")
    forwarded = Database("far-db", True, "vpc-2", "far-db.abc.ap-northeast-1.rds.amazonaws.com")
    posture = seed(databases=(forwarded,),
                   forward_hosts=frozenset({"far-db.abc.ap-northeast-1.rds.amazonaws.com"}))
    assert check(posture, "rds-private").status == FAIL
    assert check(seed(databases=(forwarded,)), "rds-private").status == PASS


def test_auto_stop_off_warns() -> None:
    found = check(seed(auto_stop=False), "auto-stop")
    assert found.status == WARN and "auto_stop = false in [profiles.foo.bastion]" in found.seen


def test_an_eip_costs_only_while_the_bastion_is_stopped() -> None:
    found = check(seed(), "eip-stopped")
    assert found.status == WARN
    assert found.seen == ("Elastic IP 203.0.113.10 on the stopped bastion costs $0.005/h "
                          "(~$3.60/month) while it stays stopped")
    assert found.fix is not None and found.fix.splitlines()[-1] == (
        "aws ec2 disassociate-address --region ap-northeast-1 --association-id eipassoc-1 && "
        "aws ec2 release-address --region ap-northeast-1 --allocation-id eipalloc-1")
    running = seed(bastion=replace(seed().bastion, state="running"))  # type: ignore[type-var]
    assert check(running, "eip-stopped").status == PASS
    assert check(seed(elastic_ip=None), "eip-stopped").seen == "no Elastic IP on the bastion"


def test_imdsv1_anywhere_fails_with_a_command_per_instance() -> None:
    app = replace(seed().others[0], http_tokens="optional")
    found = check(seed(others=(app,)), "imdsv2")
    assert (found.status, found.seen) == (
        FAIL, "IMDSv1 allowed (HttpTokens optional) on foo-appserver (i-a)")
    assert found.fix == ("aws ec2 modify-instance-metadata-options --instance-id i-a "
                         "--http-tokens required --region ap-northeast-1")
    unknown = replace(seed().others[0], http_tokens=None)
    assert check(seed(others=(unknown,)), "imdsv2").status == WARN


@pytest.mark.parametrize(("kind", "small"), [
    ("t3.micro", True), ("t4g.nano", True), ("t3a.small", True), ("t2.small", True),
    ("t3.medium", False), ("m5.large", False), ("t3.xlarge", False), ("c7g.large", False)])
def test_small_instance_types(kind: str, small: bool) -> None:
    assert is_small(kind) is small
    found = check(seed(bastion=replace(seed().bastion, instance_type=kind)),  # type: ignore
                  "bastion-small")
    assert found.status == (PASS if small else WARN)
    if not small:
        assert found.fix is not None
        assert found.fix.endswith("--instance-type Value=" + ("t4g.micro" if "g." in kind
                                                              else "t3.micro"))


@pytest.mark.parametrize("denied", IAM_ACTIONS)
def test_a_refused_describe_makes_the_checks_that_need_it_warn(denied: str) -> None:
    posture = seed(denied=frozenset({denied}))
    if denied == "ec2:DescribeInstances":
        posture = replace(posture, bastion=None, others=(), vpc_id=None)
    report = audit(posture)
    degraded = [c for c in report.checks if c.seen == f"could not check: needs {denied}"]
    assert degraded and all(c.status == WARN for c in degraded)
    assert all(c.fix == f"add {denied} to the IAM policy of these credentials"
               for c in degraded)
    expected = {"ec2:DescribeInstances": set(CHECK_IDS) - {"auto-stop"},
                "ec2:DescribeSecurityGroups": {"bastion-ssh-only", "bastion-ssh-world",
                                               "app-rules-expired", "appservers-no-world-ssh",
                                               "web-only-http"},
                "ec2:DescribeAddresses": {"eip-stopped"},
                "rds:DescribeDBInstances": {"rds-private"}}[denied]
    assert {c.id for c in degraded} == expected
    assert report.ok  # a check it could not make is no failure


def test_revoke_commands_for_other_sources() -> None:
    assert revoke_command(R, rule(SSH, None, protocol="-1")).endswith(
        "--protocol all --cidr 0.0.0.0/0")
    assert revoke_command(R, rule(SSH, 22, "sg-x", kind="group")).endswith(
        "--protocol tcp --port 22 --source-group sg-x")
    assert revoke_command(R, rule(SSH, 1000, to=2000)).endswith("--port 1000-2000 --cidr 0.0.0.0/0")
    assert revoke_command(R, rule(SSH, 22, "pl-1", kind="prefix-list")).endswith(
        "'IpProtocol=tcp,FromPort=22,ToPort=22,PrefixListIds=[{PrefixListId=pl-1}]'")


def test_the_json_shape() -> None:
    report = audit(seed(databases=(Database("foo-db", True, VPC),)))
    data = report.to_json()
    assert set(data) >= {"profile", "ok", "checks", "summary"}
    assert data["profile"] == "foo" and data["ok"] is False
    assert data["summary"] == {"pass": 7, "warn": 2, "fail": 1}
    assert all(set(c) == {"id", "status", "title", "seen", "fix"} for c in data["checks"])
    assert Report("foo", None, None, ()).ok


NOW = 1_800_000_000.0


def test_expired_my_ip_rules_warn_with_their_revoke_and_live_ones_pass() -> None:
    from bastion_tray.core.ingress import description

    live = rule(SSH, 22, "203.0.113.7/32", description=description("me@a", NOW + 300))
    gone = rule(SSH, 22, "198.51.100.9/32", description=description("bob@b", NOW - 60))
    fine = check(with_rules(seed(now=NOW), SSH, live), "app-rules-expired")
    assert fine.status == PASS and "me@a" in fine.seen
    found = check(with_rules(seed(now=NOW), SSH, live, gone), "app-rules-expired")
    assert found.status == WARN and "bob@b" in found.seen and "me@a" not in found.seen
    assert found.fix is not None and "--cidr 198.51.100.9/32" in found.fix
    assert "203.0.113.7" not in found.fix
    assert check(seed(now=NOW), "app-rules-expired").status == PASS


def test_a_world_rule_dressed_as_bastion_tray_is_exposure_like_any_other() -> None:
    from bastion_tray.core.ingress import description

    disguised = rule(SSH, 3389, "0.0.0.0/0", description=description("me@a", NOW + 300))
    found = check(with_rules(seed(now=NOW), SSH, disguised), "bastion-ssh-only")
    assert found.status == FAIL and "3389" in found.seen
