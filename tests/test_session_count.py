"""Counting other people's connections on the bastion, against the sandbox's real OpenSSH sshd:
our `BastionConnection`, plain OpenSSH `ssh -N` clients (teammates without bastion-tray) and a
second paramiko link (a teammate's daemon). Also `BastionConnection.run`'s failures.

sshd notices a client that went away within moments (the FIN arrives at once on loopback), but
not synchronously: every count that must change is waited for with a bounded poll.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion_tray.adapters.hostkeys import HostKeyStore
from bastion_tray.adapters.ssh import BastionConnection
from bastion_tray.core.config import BastionConfig
from bastion_tray.core.errors import SSHError
from bastion_tray.core.sessions import (
    COUNT_COMMAND,
    MARK_PROC,
    MARK_SS,
    SESSION_COUNT_TIMEOUT,
    count_command,
    count_other_sessions,
)
from bastion_tray.sandbox import Sandbox

pytestmark = pytest.mark.timeout(120)
#: how long sshd may take to show a new client, or to drop one that exited
SETTLE_SECONDS = 10.0


def assert_loopback(address: str) -> None:
    assert ipaddress.ip_address(address).is_loopback, f"{address} is not loopback"


@pytest.fixture
def real_bastion(bastion: Sandbox) -> Sandbox:
    if bastion.standins:
        pytest.skip("counting needs the real OpenSSH sshd: " + bastion.standin_note)
    assert_loopback(bastion.eip)
    return bastion


@pytest.fixture
def no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


def open_link(sb: Sandbox, tmp_path: Path, name: str = "link") -> BastionConnection:
    assert_loopback(sb.eip)
    config = BastionConfig("i-0123456789abcdef0", None, sb.user, sb.client_key,
                           port=sb.bastion_port)
    store = HostKeyStore(tmp_path / f"{name}_known_hosts", user_known_hosts=sb.known_hosts)
    return BastionConnection.open(sb.eip, sb.bastion_port, config, hostkeys=store,
                                  profile="foo")


@pytest.fixture
def link(real_bastion: Sandbox, tmp_path: Path, no_agent: None) -> Iterator[BastionConnection]:
    with open_link(real_bastion, tmp_path) as conn:
        yield conn


def other_sessions(conn: BastionConnection, command: str = COUNT_COMMAND) -> int:
    return count_other_sessions(conn.run(command, SESSION_COUNT_TIMEOUT))


def settled_count(conn: BastionConnection, expected: int, command: str = COUNT_COMMAND) -> int:
    """The count once it equals `expected`, or the last one seen after SETTLE_SECONDS."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        count = other_sessions(conn, command)
        if count == expected or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


class PlainSsh:
    """``ssh -N`` to the sandbox bastion, host key checked against the sandbox's known_hosts;
    nothing under ~/.ssh is read (-F /dev/null, IdentitiesOnly) or written."""

    def __init__(self, sb: Sandbox) -> None:
        assert_loopback(sb.eip)
        argv = ["ssh", "-N", "-F", "/dev/null",
                "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={sb.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes",
                "-o", "UpdateHostKeys=no",
                "-o", "IdentitiesOnly=yes",
                "-o", "IdentityAgent=none",
                "-o", "ControlPath=none",
                "-o", "LogLevel=ERROR",
                "-i", str(sb.client_key), "-p", str(sb.bastion_port), f"{sb.user}@{sb.eip}"]
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env)

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            stderr = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise AssertionError(f"ssh -N exited with {self.proc.returncode}: {stderr}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stderr:
            self.proc.stderr.close()


@pytest.fixture
def plain_ssh(real_bastion: Sandbox) -> Iterator[list[PlainSsh]]:
    """Start clients by appending PlainSsh(real_bastion); every one is closed after the test."""
    clients: list[PlainSsh] = []
    yield clients
    for client in clients:
        client.close()


def connect_plain(sb: Sandbox, clients: list[PlainSsh], conn: BastionConnection,
                  expected: int) -> PlainSsh:
    client = PlainSsh(sb)
    clients.append(client)
    count = settled_count(conn, expected)
    client.check_running()
    assert count == expected
    return client


# --- counting ------------------------------------------------------------------------------

def test_only_our_own_link_counts_zero(link: BastionConnection) -> None:
    assert settled_count(link, 0) == 0
    for _ in range(3):  # stable, not a lucky moment
        assert other_sessions(link) == 0


def test_the_count_sees_our_own_connection_as_sshd_does(link: BastionConnection) -> None:
    text = link.run(COUNT_COMMAND, SESSION_COUNT_TIMEOUT)
    fields = text.splitlines()[1].split()
    client_ip, client_port, server_ip, server_port = fields
    assert_loopback(client_ip)
    assert (server_ip, int(server_port)) == (link.host, link.port)
    # loopback has no NAT: sshd sees our socket's own port
    assert int(client_port) == link.transport.sock.getsockname()[1]
    assert MARK_SS in text  # ss is on this machine's PATH


def test_plain_openssh_clients_count_one_then_two_then_zero_after_they_exit(
        real_bastion: Sandbox, link: BastionConnection, plain_ssh: list[PlainSsh]) -> None:
    assert settled_count(link, 0) == 0
    first = connect_plain(real_bastion, plain_ssh, link, 1)
    assert other_sessions(link) == 1
    second = connect_plain(real_bastion, plain_ssh, link, 2)
    assert other_sessions(link) == 2
    first.close()
    assert settled_count(link, 1) == 1
    second.close()
    assert settled_count(link, 0) == 0


def test_a_second_paramiko_link_counts_one_from_either_side(
        real_bastion: Sandbox, link: BastionConnection, tmp_path: Path) -> None:
    assert settled_count(link, 0) == 0
    with open_link(real_bastion, tmp_path, "teammate") as teammate:
        assert settled_count(link, 1) == 1
        assert other_sessions(teammate) == 1
        assert other_sessions(link) == 1  # the exec channels ride on the links: no new TCP
    assert settled_count(link, 0) == 0


def test_the_proc_fallback_counts_the_same_as_ss(
        real_bastion: Sandbox, link: BastionConnection, plain_ssh: list[PlainSsh]) -> None:
    proc_only = count_command(())
    assert MARK_PROC in link.run(proc_only, SESSION_COUNT_TIMEOUT)
    assert settled_count(link, 0, proc_only) == 0
    connect_plain(real_bastion, plain_ssh, link, 1)
    assert other_sessions(link, proc_only) == 1
    assert other_sessions(link) == 1


@pytest.fixture
def path_without_ss(tmp_path: Path) -> str:
    """A PATH directory holding only `cat`: what the fallback needs, and no ss."""
    bin_dir = tmp_path / "bin-without-ss"
    bin_dir.mkdir()
    cat = shutil.which("cat")
    assert cat is not None
    (bin_dir / "cat").symlink_to(cat)
    return str(bin_dir)


def test_ss_missing_from_path_falls_back_to_proc(
        real_bastion: Sandbox, link: BastionConnection, plain_ssh: list[PlainSsh],
        path_without_ss: str) -> None:
    command = f"PATH={shlex.quote(path_without_ss)} " + count_command(("ss",))
    text = link.run(command, SESSION_COUNT_TIMEOUT)
    assert MARK_PROC in text and MARK_SS not in text
    assert settled_count(link, 0, command) == 0
    connect_plain(real_bastion, plain_ssh, link, 1)
    assert other_sessions(link, command) == 1


def test_the_real_command_also_looks_in_sbin_when_path_lacks_them(
        link: BastionConnection, path_without_ss: str) -> None:
    """Amazon Linux 2023 keeps ss in /usr/sbin, which a non-login exec may lack on PATH.

    On this machine (Debian: /usr/bin/ss) the command must fall back; where /usr/sbin/ss or
    /sbin/ss exist it must find them.
    """
    in_sbin = any(os.access(p, os.X_OK) for p in ("/usr/sbin/ss", "/sbin/ss"))
    text = link.run(f"PATH={shlex.quote(path_without_ss)} {COUNT_COMMAND}",
                    SESSION_COUNT_TIMEOUT)
    assert (MARK_SS if in_sbin else MARK_PROC) in text
    assert count_other_sessions(text) >= 0


# --- run -----------------------------------------------------------------------------------

def test_run_returns_stdout_as_text_with_bad_bytes_replaced(link: BastionConnection) -> None:
    assert link.run("printf 'caf\\303\\251 \\377!'", 5) == "café \ufffd!"


def test_run_names_the_exit_code_and_the_first_line_of_stderr(
        link: BastionConnection) -> None:
    with pytest.raises(SSHError) as caught:
        link.run("echo out; printf 'no such table\\nsecond line\\n' >&2; exit 3", 5)
    message = caught.value.message
    assert message.endswith("failed: it exited with code 3: no such table")  # the 1st line
    assert f"{link.host}:{link.port}" in message
    assert link.alive


def test_run_past_its_timeout_fails_within_a_second_of_it_and_leaves_the_link_usable(
        link: BastionConnection) -> None:
    started = time.monotonic()
    with pytest.raises(SSHError, match=r"timed out after 1\.5 s"):
        link.run("sleep 5", 1.5)
    took = time.monotonic() - started
    assert 1.4 <= took < 2.5, f"took {took:.2f} s"
    assert link.alive
    assert link.run("echo still here", 5) == "still here\n"


def test_run_reads_at_most_one_mebibyte(link: BastionConnection) -> None:
    started = time.monotonic()
    text = link.run("head -c 3000000 /dev/zero | tr '\\0' x", 10)
    assert text == "x" * (1024 * 1024)
    assert time.monotonic() - started < 5


def test_run_drains_a_large_stderr_while_reading_stdout(link: BastionConnection) -> None:
    """More stderr than the channel window (2 MiB) must not stall the command."""
    assert link.run("head -c 3000000 /dev/zero >&2; echo done", 10) == "done\n"


def test_run_when_sshd_refuses_another_session_says_so(link: BastionConnection) -> None:
    """The sandbox sshd allows MaxSessions 50 per connection: the 51st channel is refused."""
    held = [link.transport.open_session(timeout=5) for _ in range(50)]
    try:
        with pytest.raises(SSHError, match="the bastion refused a session channel") as caught:
            link.run("true", 5)
        assert "MaxSessions" in (caught.value.hint or "")
    finally:
        for channel in held:
            channel.close()
    assert link.alive
    deadline = time.monotonic() + SETTLE_SECONDS  # sshd frees the sessions as the closes land
    while True:
        try:
            assert link.run("echo again", 5) == "again\n"
            break
        except SSHError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_run_on_a_closed_link_says_so(real_bastion: Sandbox, tmp_path: Path,
                                      no_agent: None) -> None:
    conn = open_link(real_bastion, tmp_path)
    conn.close()
    with pytest.raises(SSHError, match="cannot run a command: the connection to the bastion"):
        conn.run("true", 5)
