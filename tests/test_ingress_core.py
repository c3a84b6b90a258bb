"""core/ingress.py: what a grant or a release does to the SSH group's rules (pure)."""

from __future__ import annotations

import pytest

from bastion_tray.core.ingress import (
    Group,
    Rule,
    description,
    host_cidr,
    parse_description,
    pick_group,
    plan,
    world_open,
)

NOW = 1_800_000_000.0
ME, BOB = "me@laptop-a", "bob@laptop-b"


def rule(cidr: str, user: str | None = None, until: float = NOW + 600, port: int = 22) -> Rule:
    text = description(user, until) if user else ""
    return Rule("tcp", port, port, cidr, text)


def test_the_description_round_trips_and_keeps_colons_in_user_ids() -> None:
    text = description("me:x@host", NOW + 0.2)
    assert text.startswith("bastion-tray:me:x@host:until=") and text.endswith("Z")
    user, until = parse_description(text)  # type: ignore[misc]
    assert user == "me:x@host" and until == NOW + 1  # rounded up: never ends early
    assert parse_description("office VPN") is None
    assert parse_description("bastion-tray:bob:until=garbage") == ("bob", None)


def test_host_cidr_takes_one_ipv4_address_only() -> None:
    assert host_cidr(" 203.0.113.7\n") == "203.0.113.7/32"
    for bad in ("", "2001:db8::1", "203.0.113.0/24", "<html>", "203.0.113.7 extra"):
        with pytest.raises(ValueError):
            host_cidr(bad)


def test_a_first_grant_authorizes_and_reaps_only_expired_rules() -> None:
    rules = (rule("0.0.0.0/0"), rule("198.51.100.20/32", BOB),
             rule("198.51.100.30/32", "carol", until=NOW - 300))
    p = plan(rules, ME, "203.0.113.7/32", 22, NOW)
    assert p.authorize and p.renew is None and p.covered_by is None
    assert [r.cidr for r in p.revoke] == ["198.51.100.30/32"]


def test_our_rule_is_renewed_in_place_and_ours_elsewhere_is_revoked() -> None:
    rules = (rule("203.0.113.7/32", ME), rule("198.51.100.9/32", ME))
    p = plan(rules, ME, "203.0.113.7/32", 22, NOW)
    assert not p.authorize and p.renew == rules[0]
    assert p.revoke == (rules[1],)


def test_a_teammate_behind_the_same_address_covers_us_and_keeps_the_rule() -> None:
    rules = (rule("203.0.113.7/32", BOB),)
    p = plan(rules, ME, "203.0.113.7/32", 22, NOW)
    assert not p.authorize and p.renew is None and p.revoke == () and p.covered_by == BOB
    assert plan(rules, ME, None, 22, NOW).revoke == ()  # our release leaves it to bob


def test_an_expired_rule_for_our_address_is_taken_over_without_a_gap() -> None:
    rules = (rule("203.0.113.7/32", "carol", until=NOW - 300),)
    p = plan(rules, ME, "203.0.113.7/32", 22, NOW)
    assert p.renew == rules[0] and not p.authorize and p.revoke == ()


def test_a_release_revokes_ours_and_expired_ones_never_a_live_teammate() -> None:
    rules = (rule("203.0.113.7/32", ME), rule("198.51.100.20/32", BOB),
             rule("198.51.100.30/32", "carol", until=NOW - 300), rule("192.0.2.0/24"))
    p = plan(rules, ME, None, 22, NOW)
    assert sorted(r.cidr for r in p.revoke) == ["198.51.100.30/32", "203.0.113.7/32"]
    assert not p.authorize


def test_our_rule_on_another_port_belongs_to_another_profile_and_is_left_alone() -> None:
    rules = (rule("203.0.113.7/32", ME, port=2222),)
    p = plan(rules, ME, "203.0.113.7/32", 22, NOW)
    assert p.authorize and p.revoke == ()
    assert plan(rules, ME, None, 22, NOW).revoke == ()
    lapsed = (rule("203.0.113.7/32", ME, until=NOW - 1, port=2222),)
    assert plan(lapsed, ME, None, 22, NOW).revoke == lapsed  # once lapsed, reaped like any


def test_a_release_keeps_our_rule_while_another_profile_of_ours_holds_it() -> None:
    rules = (rule("203.0.113.7/32", ME), rule("198.51.100.30/32", "carol", until=NOW - 300))
    p = plan(rules, ME, None, 22, NOW, keep_ours=True)
    assert [r.cidr for r in p.revoke] == ["198.51.100.30/32"]


def test_a_teammate_a_little_past_until_is_not_reaped_yet_and_odd_rules_never() -> None:
    late = rule("198.51.100.20/32", BOB, until=NOW - 60)  # bob's clock, or his renewal in flight
    unreadable = Rule("tcp", 22, 22, "198.51.100.21/32", "bastion-tray:ops:until=never")
    wide = Rule("tcp", 22, 22, "0.0.0.0/0", description("ops", NOW - 3600))
    p = plan((late, unreadable, wide), ME, "203.0.113.7/32", 22, NOW)
    assert p.revoke == () and p.authorize
    assert plan((late,), ME, None, 22, NOW + 200).revoke == (late,)


def test_the_group_is_the_one_that_opens_the_port_else_22_else_an_error_that_says_so() -> None:
    web = Group("sg-1", "web", (rule("0.0.0.0/0", port=80),))
    ssh = Group("sg-2", "ssh", (rule("0.0.0.0/0", port=22),))
    default = Group("sg-3", "default", (Rule("-1", None, None, "10.0.0.0/16"),))
    assert pick_group((web, ssh, default), 22, None) == ssh
    assert pick_group((web, ssh, default), 40022, None) == ssh  # the sandbox's random port
    assert pick_group((web, ssh), 22, "web") == web
    assert pick_group((web, ssh), 22, "sg-1") == web
    assert "not one of the bastion's security groups" in str(pick_group((web,), 22, "sg-9"))
    assert pick_group((web, default), 22, None) == web  # the only group of its own
    emptied = Group("sg-5", "ssh", ())  # its world rule revoked, as audit asks: opens nothing
    assert pick_group((default, emptied), 22, None) == emptied
    assert "set ingress_group" in str(pick_group((web, emptied, default), 22, None))
    assert "set ingress_group" in str(pick_group((default,), 22, None))
    twice = Group("sg-4", "ssh2", (rule("0.0.0.0/0", port=22),))
    assert "several" in str(pick_group((ssh, twice), 22, None))
    assert world_open(ssh, 22) and not world_open(web, 22)
