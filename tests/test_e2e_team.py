"""Teams against the sandbox (DESIGN.md "Teams"): two real daemons with their own homes and
user ids, and a plain OpenSSH client as a third teammate, on one sandbox bastion; the sandbox
plays EventBridge Scheduler for the backstop. Short durations: idle 6 s, backstop 30 s.

Every scenario prints its timeline (seconds from each event to the stop) for the issue's note.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from bastion_tray.core.netguard import is_loopback
from bastion_tray.core.team import LEASE_PREFIX, parse_iso_utc, schedule_name
from bastion_tray.sandbox import Sandbox
from bastion_tray.sandbox.net import free_port
from tests.support.app import App, alive, wait_until

pytestmark = pytest.mark.timeout(240)

IDLE = 6
BACKSTOP = 30
ALICE, BOB = "alice@laptop-a", "bob@laptop-b"


def teammate(make_app: type[App], user: str, *, idle: int = IDLE, role: bool = True) -> App:
    """One teammate's installation: own home, own user id, own forward port."""
    app = make_app(idle_timeout=idle, warn_before=1, db_local_port=free_port(),
                   extra_settings={"user_id": user},
                   extra_bastion={"backstop": f"{BACKSTOP}s"})
    if role:  # as `bastion-tray init` writes it
        text = app.config.read_text().replace(
            "[profiles.foo.bastion]\n",
            f'[profiles.foo.bastion]\nbackstop_role = "{app.sandbox.backstop_role_arn}"\n', 1)
        app.config.write_text(text)
    return app


def connect(app: App) -> int:
    local = app.cli("connect", "foo", "db", check=True).stdout.strip()
    host, _, port = local.rpartition(":")
    assert host == "127.0.0.1", local
    return int(port)


def mysql(port: int, sb: Sandbox) -> pymysql.Connection:  # type: ignore[type-arg]
    return pymysql.connect(host="127.0.0.1", port=port, user=sb.db_user,
                           password=sb.db_password, database=sb.db_name, connect_timeout=10,
                           read_timeout=30)


def ask(conn: pymysql.Connection, sql: str = "SELECT 1") -> Any:  # type: ignore[type-arg]
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def leases(sb: Sandbox) -> dict[str, str]:
    reply = sb.ec2().describe_instances(InstanceIds=[sb.bastion_instance_id])
    tags = reply["Reservations"][0]["Instances"][0].get("Tags", [])
    return {t["Key"][len(LEASE_PREFIX):]: t["Value"] for t in tags
            if t["Key"].startswith(LEASE_PREFIX)}


def wait_state(app: App, state: str, timeout: float) -> float:
    started = time.monotonic()
    wait_until(lambda: app.instance_state() == state, timeout, f"the bastion {state}",
               interval=0.2)
    return time.monotonic() - started


def timeline(name: str, **seconds: float) -> None:
    print(f"\n[timeline] {name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))


@contextlib.contextmanager
def plain_ssh_forward(sb: Sandbox) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A teammate with OpenSSH only: `ssh -N -L port:db:3306 bastion`, host key checked."""
    assert is_loopback(sb.eip) and is_loopback(sb.db_host)
    port = free_port()
    proc = subprocess.Popen(
        ["ssh", "-N", "-L", f"127.0.0.1:{port}:{sb.db_host}:{sb.db_port}",
         "-i", str(sb.client_key), "-p", str(sb.bastion_port),
         "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
         "-o", f"UserKnownHostsFile={sb.known_hosts}", "-o", "IdentitiesOnly=yes",
         "-o", "ExitOnForwardFailure=yes", "-F", "/dev/null", f"{sb.user}@{sb.eip}"],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _listening(port) or proc.poll() is not None, 15,
                   "the plain ssh forward to listen")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


# ---- a teammate's daemon --------------------------------------------------------------------

def test_a_teammate_holding_a_connection_is_never_cut_and_the_last_one_out_stops_it(
        make_app: type[App]) -> None:
    alice, bob = teammate(make_app, ALICE), teammate(make_app, BOB, idle=IDLE)
    sb = alice.sandbox
    a_conn = mysql(connect(alice), sb)  # alice starts the bastion
    assert ask(a_conn) == 1
    b_conn = mysql(connect(bob), sb)  # bob joins and holds his connection
    assert ask(b_conn) == 1
    assert set(leases(sb)) == {ALICE, BOB}
    a_conn.close()
    closed = time.monotonic()
    wait_until(lambda: alice.status()["waiting_for_others"], IDLE + 15,
               "alice's stop to wait for bob")
    vetoed = time.monotonic() - closed
    s = alice.status()
    assert s["in_use_by"] == [BOB] and s["bastion"]["ssh"] == "disconnected"
    assert ALICE not in leases(sb)  # alice released hers: bob never waits for her
    assert alice.cli("status").stdout.startswith(f"foo: in use by {BOB} · you are idle")
    time.sleep(IDLE)  # alice re-checks meanwhile; bob's connection is untouched
    assert alice.instance_state() == "running"
    assert ask(b_conn, "SELECT COUNT(*) FROM greetings") >= 1  # bob's next query works
    b_conn.close()
    b_closed = time.monotonic()
    took = wait_state(alice, "stopped", IDLE + 30)
    timeline("daemon teammate", alice_idle_to_veto=vetoed, bob_close_to_stopped=took)
    assert took < IDLE + 20
    wait_until(lambda: not leases(sb), 10, "every lease gone")
    wait_until(lambda: not sb.schedules(), 10, "no backstop schedule left")
    del b_closed


def test_stop_asks_for_force_while_a_teammate_uses_it(make_app: type[App]) -> None:
    alice, bob = teammate(make_app, ALICE, idle=300), teammate(make_app, BOB, idle=300)
    alice.cli("up", "foo", check=True)
    bob.cli("up", "foo", check=True)
    refused = alice.cli("stop", "foo")
    assert refused.returncode == 1, refused
    assert BOB in refused.stderr and "--force" in refused.stderr
    assert alice.instance_state() == "running"
    forced = alice.cli("stop", "foo", "--force")
    assert forced.returncode == 0, forced.stderr
    wait_state(alice, "stopped", 20)
    wait_until(lambda: not sb_schedules(alice), 10, "the backstop deleted by the forced stop")


def sb_schedules(app: App) -> list[str]:
    return app.sandbox.schedules()


# ---- a plain OpenSSH teammate ---------------------------------------------------------------

def test_a_plain_ssh_teammate_vetoes_the_idle_stop_until_it_leaves(make_app: type[App]) -> None:
    alice = teammate(make_app, ALICE)
    sb = alice.sandbox
    conn = mysql(connect(alice), sb)
    ask(conn)
    with plain_ssh_forward(sb) as (ssh, port):
        theirs = mysql(port, sb)
        assert ask(theirs) == 1
        conn.close()
        closed = time.monotonic()
        wait_until(lambda: alice.status()["waiting_for_others"], IDLE + 15,
                   "alice's stop to wait for the ssh user")
        vetoed = time.monotonic() - closed
        s = alice.status()
        assert s["other_sessions"] == 1 and s["in_use_by"] == []
        time.sleep(IDLE)
        assert alice.instance_state() == "running"
        assert ask(theirs, "SELECT COUNT(*) FROM greetings") >= 1
        theirs.close()
        ssh.terminate()
        ssh.wait(10)
        left = time.monotonic()
    took = wait_state(alice, "stopped", 30)
    timeline("plain ssh teammate", alice_idle_to_veto=vetoed, ssh_exit_to_stopped=took)
    assert took < 15
    del left


# ---- the backstop ---------------------------------------------------------------------------

def test_a_sigkilled_daemon_with_nobody_else_is_stopped_by_the_backstop(
        make_app: type[App]) -> None:
    alice = teammate(make_app, ALICE, idle=300)
    sb = alice.sandbox
    alice.cli("up", "foo", check=True)
    name = schedule_name(sb.bastion_instance_id)
    wait_until(lambda: name in sb.schedules(), 10, "the backstop schedule")
    fires = alice.status()["backstop"]
    assert fires["state"] == "armed"
    assert BACKSTOP - 12 <= fires["fires_in_seconds"] <= BACKSTOP
    pid = alice.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), 5, "the daemon gone")
    killed = time.monotonic()
    took = wait_state(alice, "stopped", BACKSTOP + 15)
    timeline("SIGKILLed daemon", kill_to_stopped=took)
    assert took <= BACKSTOP + 5
    runs = [r for r in sb.schedule_runs() if r.name == name]
    assert runs and runs[-1].ok, runs
    assert name not in sb.schedules()  # ActionAfterCompletion DELETE
    del killed


def test_a_connection_held_for_several_backstop_periods_is_never_cut(
        make_app: type[App]) -> None:
    alice = teammate(make_app, ALICE)
    sb = alice.sandbox
    conn = mysql(connect(alice), sb)
    name = schedule_name(sb.bastion_instance_id)
    before = len([r for r in sb.schedule_runs() if r.name == name])
    held = time.monotonic()
    while time.monotonic() - held < 2.5 * BACKSTOP:
        assert ask(conn) == 1
        assert alice.instance_state() == "running"
        time.sleep(3)
    assert len([r for r in sb.schedule_runs() if r.name == name]) == before
    fires = parse_iso_utc(alice.status()["backstop"]["fires_at"])
    assert fires is not None and fires > time.time() + BACKSTOP / 2  # pushed all along
    conn.close()
    wait_state(alice, "stopped", IDLE + 20)


def test_a_normal_stop_leaves_no_schedule_and_no_tag(make_app: type[App]) -> None:
    alice = teammate(make_app, ALICE)
    sb = alice.sandbox
    conn = mysql(connect(alice), sb)
    wait_until(lambda: schedule_name(sb.bastion_instance_id) in sb.schedules(), 10,
               "the backstop schedule")
    assert ALICE in leases(sb)
    conn.close()
    wait_state(alice, "stopped", IDLE + 20)
    wait_until(lambda: not sb.schedules() and not leases(sb), 10,
               "the schedule and the lease gone")


def test_without_a_role_status_says_the_backstop_is_off_and_why(make_app: type[App]) -> None:
    alice = teammate(make_app, ALICE, idle=300, role=False)
    alice.cli("up", "foo", check=True)
    s = alice.status()["backstop"]
    assert s["state"] == "off" and "backstop_role" in s["reason"]
    assert "backstop: off" in alice.cli("status").stdout
    assert not alice.sandbox.schedules()
