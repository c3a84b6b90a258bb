"""The my-ip rules on the bastion's SSH group, as data (DESIGN.md "Access").

A rule of ours is tcp/`port` from one /32, described `bastion-tray:<user_id>:until=<ISO UTC>`.
`plan` decides, from the group's rules as EC2 lists them, what one grant does: add or renew
ours, revoke ours for any other address, reap anyone's expired bastion-tray rules — and never
touch a live rule of someone else's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from bastion_tray.core.team import iso_utc, parse_iso_utc

RULE_PREFIX = "bastion-tray:"
_UNTIL = ":until="


@dataclass(frozen=True)
class Rule:
    """One IPv4 range of one ingress permission."""

    protocol: str  # "tcp", "-1" (all), …
    from_port: int | None
    to_port: int | None
    cidr: str
    description: str = ""

    def opens(self, port: int) -> bool:
        if self.protocol == "-1":
            return True
        if self.protocol not in ("tcp", "6") or self.from_port is None or self.to_port is None:
            return False
        return self.from_port <= port <= self.to_port

    @property
    def owner(self) -> tuple[str, float | None] | None:
        """(user_id, until) of a rule described as bastion-tray's; None for anyone else's."""
        return parse_description(self.description)

    @property
    def claim(self) -> tuple[str, float] | None:
        """(user_id, until) of a rule that is bastion-tray's by its shape too: a /32 with a
        readable until. Anything else — a wider rule, an unreadable until — is nobody's to
        renew or reap, whatever its description says."""
        owner = self.owner
        if owner is None or owner[1] is None or not self.cidr.endswith("/32"):
            return None
        return owner[0], owner[1]


@dataclass(frozen=True)
class Group:
    group_id: str
    name: str
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class Plan:
    authorize: bool = False  # add our rule for the address
    renew: Rule | None = None  # rewrite this rule's description (ours, or an expired one's)
    revoke: tuple[Rule, ...] = field(default_factory=tuple)
    covered_by: str | None = None  # someone else's live rule opens the address already


def description(user_id: str, until: float) -> str:
    return f"{RULE_PREFIX}{user_id}{_UNTIL}{iso_utc(until)}"


def parse_description(text: str) -> tuple[str, float | None] | None:
    """(user_id, until epoch or None when unreadable) of `bastion-tray:<user>:until=<ISO>`."""
    if not text.startswith(RULE_PREFIX):
        return None
    body = text[len(RULE_PREFIX):]
    user, sep, until = body.rpartition(_UNTIL)
    if not sep or not user:
        return None
    return user, parse_iso_utc(until)


def host_cidr(address: str) -> str:
    """"203.0.113.7" → "203.0.113.7/32"; ValueError for anything but one IPv4 address."""
    parsed = ipaddress.ip_address(address.strip())
    if parsed.version != 4:
        raise ValueError(f"{address!r} is not an IPv4 address")
    return f"{parsed}/32"


#: a teammate's rule is reaped this long after its until only: their laptop's clock may be a
#: little behind ours, and a renewal in flight must not lose the race to our reaping
REAP_GRACE = 120.0


def plan(rules: tuple[Rule, ...], me: str, cidr: str | None, port: int, now: float, *,
         keep_ours: bool = False, grace: float = REAP_GRACE) -> Plan:
    """What a grant (cidr: our /32) or a release (cidr None) does to the group's rules.

    Ours: this user's rules for `port` (a rule of ours on another port belongs to another
    profile of ours; it is left alone until its until has passed). `keep_ours`: another profile
    of this daemon still holds our rule for `port` — a release leaves it."""
    revoke: list[Rule] = []
    renew: Rule | None = None
    covered_by: str | None = None
    for rule in rules:
        owner = rule.claim
        if owner is None:
            if cidr is not None and rule.cidr == cidr and rule.opens(port) and not covered_by:
                covered_by = "a rule that is not bastion-tray's"
            continue
        user, until = owner
        ours = user == me and rule.from_port == rule.to_port == port
        lapsed = until + (0.0 if user == me else grace) <= now
        usable = rule.cidr == cidr and rule.opens(port)
        if usable and renew is None and (ours or lapsed):
            renew = rule  # ours to renew, or a lapsed one to take over (no gap, no dup)
        elif (ours and not keep_ours) or lapsed:
            revoke.append(rule)
        elif usable and user != me and covered_by is None:
            covered_by = user
    if covered_by is not None and renew is not None and renew.owner and renew.owner[0] != me:
        renew = None  # a lapsed other's rule and a live cover: leave the reaping to later
    authorize = cidr is not None and renew is None and covered_by is None
    return Plan(authorize=authorize, renew=renew, revoke=tuple(revoke), covered_by=covered_by)


def pick_group(groups: tuple[Group, ...], port: int, wanted: str | None) -> Group | str:
    """The group our rules go on, or why none could be picked. `wanted`: ingress_group (an id
    or a name) — else the bastion's group that opens `port`, else the one that opens 22, else
    its only group besides `default` (a group whose world rule was revoked, as `audit` asks,
    opens nothing while nobody uses the bastion)."""
    if wanted is not None:
        for group in groups:
            if wanted in (group.group_id, group.name):
                return group
        names = ", ".join(f"{g.group_id} ({g.name})" for g in groups) or "none"
        return f"ingress_group {wanted!r} is not one of the bastion's security groups ({names})"
    for wanted_port in dict.fromkeys((port, 22)):
        opening = [g for g in groups if any(r.opens(wanted_port) and r.protocol != "-1"
                                            for r in g.rules)]
        if len(opening) == 1:
            return opening[0]
        if len(opening) > 1:
            names = ", ".join(f"{g.group_id} ({g.name})" for g in opening)
            return (f"several of the bastion's security groups open port {wanted_port}: "
                    f"{names}; set ingress_group to the one to use")
    own = [g for g in groups if g.name != "default"]
    if len(own) == 1:
        return own[0]
    names = ", ".join(f"{g.group_id} ({g.name})" for g in groups) or "none"
    return (f"none of the bastion's security groups ({names}) opens port {port}; set "
            "ingress_group to the group that should hold the SSH rule")


def world_open(group: Group, port: int) -> bool:
    """Whether the group also opens `port` to everyone (then my-ip narrows nothing)."""
    return any(r.cidr in ("0.0.0.0/0",) and r.opens(port) for r in group.rules)
