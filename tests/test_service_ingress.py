"""ingress = "my-ip" in-process (DESIGN.md "Access"): the real ProfileRuntime and lifecycle with
fake adapters and a fake clock. The rule exists exactly while the daemon uses the bastion; each
bring-up waits for its own grant before it probes SSH; a failed grant fails the bring-up."""

from __future__ import annotations

from bastion_tray.core import lifecycle as lc
from bastion_tray.core.errors import CloudError
from tests.support.fakes import Harness
from tests.test_service_team import IDLE, RECHECK, up


def test_the_rule_is_granted_before_ssh_renewed_with_the_lease_and_revoked_at_the_stop() -> None:
    h = Harness(lease_ttl=60, ingress="my-ip")
    h.spawner.hold.add("ingress-")
    waiter = h.rt.request()
    h.ticks(3)
    assert h.cloud.state == "running"
    assert h.adapters.waited == []  # running, but no SSH probe before the rule is in
    assert h.status()["phase"] == "opening the SSH port"
    h.spawner.hold.clear()
    h.spawner.release("ingress-")
    h.ticks(1)
    assert waiter.done.is_set() and waiter.error is None, waiter.error
    assert h.adapters.waited, "the probe went out once the rule was in"
    ingress = h.adapters.the_ingress
    assert list(ingress.rules) == ["203.0.113.7/32"]
    first = ingress.rules["203.0.113.7/32"]
    snap = h.status()["bastion"]["ingress"]
    assert snap["mode"] == "my-ip" and snap["address"] == "203.0.113.7/32" and snap["until"]
    grants = ingress.calls.count("grant")
    h.ticks(21)  # a third of the lease's 60 s: renewed
    assert ingress.calls.count("grant") == grants + 1
    assert ingress.rules["203.0.113.7/32"] > first
    h.ticks(IDLE)
    assert h.cloud.state == "stopped"
    assert ingress.rules == {} and ingress.calls[-1] == "release"
    assert h.status()["bastion"]["ingress"]["address"] is None


def test_a_failed_grant_fails_the_bring_up_with_its_reason_and_never_probes() -> None:
    h = Harness(ingress="my-ip")
    h.adapters.the_ingress.fail = CloudError(
        "could not learn this machine's public address from https://checkip.example: timed out",
        hint="the SSH port stays closed")
    waiter = h.rt.request()
    h.ticks(3)
    assert waiter.done.is_set()
    assert waiter.error is not None and "public address" in waiter.error.message
    assert h.adapters.waited == [] and h.adapters.links == []
    assert h.status()["bastion"]["ssh"] == "disconnected"


def test_a_new_address_after_a_lost_link_gets_its_own_rule_before_reconnecting() -> None:
    h = Harness(ingress="my-ip")
    up(h)
    ingress = h.adapters.the_ingress
    h.rt.open_forward("db")
    assert list(ingress.rules) == ["203.0.113.7/32"]
    ingress.address = "198.51.100.9/32"  # the laptop woke on another network
    h.spawner.hold.add("ingress-")
    h.link.lose("network changed")
    h.ticks(3)
    probes = len(h.adapters.waited)
    assert h.status()["bastion"]["ssh"] != "connected"
    h.spawner.hold.clear()
    h.spawner.release("ingress-")
    h.ticks(3)
    assert h.status()["bastion"]["ssh"] == "connected"
    assert len(h.adapters.waited) > probes
    assert list(ingress.rules) == ["198.51.100.9/32"]
    assert h.status()["bastion"]["ingress"]["address"] == "198.51.100.9/32"


def test_open_ingress_touches_no_security_group() -> None:
    h = Harness()
    up(h)
    h.ticks(IDLE + 5)
    assert h.cloud.state == "stopped"
    assert h.adapters.the_ingress.calls == []
    assert h.status()["bastion"]["ingress"]["mode"] == "open"


def test_a_rule_left_by_a_crash_is_revoked_by_the_restarted_daemon_that_does_not_use_it() -> None:
    h = Harness(ingress="my-ip")
    up(h)
    ingress = h.adapters.the_ingress
    assert ingress.rules
    the_ingress = ingress
    h.restart()  # as after a SIGKILL: the state file says a rule of ours may be there
    h.adapters.the_ingress = the_ingress
    h.rt.ingress = the_ingress
    h.rt.refresh()
    h.ticks(2)
    assert the_ingress.rules == {} and the_ingress.calls[-1] == "release"


def test_the_exit_waits_for_the_revoke() -> None:
    h = Harness(ingress="my-ip")
    up(h)
    ingress = h.adapters.the_ingress
    h.spawner.hold.add("ingress-")
    done = h.rt._waiter()
    h.rt.post(lc.Exit(done.id))
    h.ticks(3)
    assert not done.done.is_set() and ingress.rules
    h.spawner.hold.clear()
    h.spawner.release("ingress-")
    h.ticks(2)
    assert done.done.is_set() and ingress.rules == {}


def test_while_a_teammate_keeps_us_from_stopping_our_rule_stays_for_the_counts() -> None:
    """Regression: the rule was revoked as soon as we went idle, so the re-checks' counts
    connected from an address the security group no longer admitted — three failures and the
    leases alone decided, stopping the bastion under a plain-ssh teammate."""
    h = Harness(ingress="my-ip")
    up(h)
    ingress = h.adapters.the_ingress
    h.adapters.others_on_bastion = 1  # bob, with plain ssh
    h.ticks(IDLE + 1)
    assert h.cloud.state == "running" and h.status()["waiting_for_others"]
    assert h.status()["lease"]["held"] is False  # nothing that makes bob wait for us…
    assert list(ingress.rules) == ["203.0.113.7/32"]  # …but our counts still get in
    h.ticks(RECHECK)
    assert ingress.rules and h.cloud.state == "running"
    h.adapters.others_on_bastion = 0  # bob logs out
    h.ticks(RECHECK)
    assert h.cloud.state == "stopped"
    assert ingress.rules == {} and ingress.calls[-1] == "release"
