"""The bastion transport and the readiness probe against real peers: OpenSSH sshd and MariaDB.

The sandbox's bastion serves most tests. A second, private sshd of this module (`own_sshd`)
authorizes extra client keys (encrypted ones) and is the one frozen with SIGSTOP, so a dead
peer never disturbs the shared sandbox.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bastion_tray.adapters.hostkeys import HostKeyStore, known_hosts_name
from bastion_tray.adapters.readiness import wait_until_ssh_answers
from bastion_tray.adapters.ssh import BastionConnection
from bastion_tray.core.config import BastionConfig
from bastion_tray.core.errors import LoopbackViolation, SSHError, WaitTimeout
from bastion_tray.sandbox import Sandbox, missing_prerequisites
from bastion_tray.sandbox.net import free_port, pick_loopback_address
from bastion_tray.sandbox.prereqs import find_tool
from bastion_tray.sandbox.procs import descendants, kill_tree

pytestmark = pytest.mark.timeout(60)
PASSPHRASE = "correct horse battery staple"


def keygen(path: Path, *args: str, passphrase: str = "") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, *args,
                    "-f", str(path)], check=True, capture_output=True)
    return path


def listener(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((host, 0))
    sock.listen(8)
    return sock


# --- fixtures -----------------------------------------------------------------------------

def bastion_config(sb: Sandbox | OwnSshd, **changes: object) -> BastionConfig:
    key = sb.client_key
    port = sb.bastion_port if isinstance(sb, Sandbox) else sb.port
    fields: dict[str, object] = {"instance_id": "i-0123456789abcdef0", "name": None,
                                 "user": sb.user, "identity_file": key, "port": port}
    fields.update(changes)
    return BastionConfig(**fields)  # type: ignore[arg-type]


def open_sandbox(sb: Sandbox, tmp_path: Path, **kwargs: object) -> BastionConnection:
    store = HostKeyStore(tmp_path / "app_known_hosts", user_known_hosts=sb.known_hosts)
    config = kwargs.pop("config", None) or bastion_config(sb)
    return BastionConnection.open(sb.eip, sb.bastion_port, config,  # type: ignore[arg-type]
                                  hostkeys=store, profile="foo", **kwargs)  # type: ignore[arg-type]


@dataclass
class OwnSshd:
    host: str
    port: int
    user: str
    proc: subprocess.Popen[bytes]
    client_key: Path  # unencrypted, authorized
    encrypted_key: Path  # OpenSSH format, PASSPHRASE, authorized
    encrypted_pem: Path  # legacy PEM RSA, PASSPHRASE, authorized
    store: HostKeyStore

    def pids(self) -> list[int]:
        return [self.proc.pid, *descendants(self.proc.pid)]


@pytest.fixture(scope="module")
def own_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnSshd]:
    if missing_prerequisites():
        pytest.skip("needs: apt-get install " + " ".join(missing_prerequisites()))
    work = tmp_path_factory.mktemp("own_sshd")
    host = pick_loopback_address(random.Random(), {"127.0.0.1"})
    port = free_port(host)
    host_key = keygen(work / "host_ed25519")
    client = keygen(work / "client")
    encrypted = keygen(work / "encrypted", passphrase=PASSPHRASE)
    pem = work / "encrypted_rsa.pem"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", PASSPHRASE,
                    "-f", str(pem)], check=True, capture_output=True)
    authorized = work / "authorized_keys"
    authorized.write_text("".join(Path(f"{k}.pub").read_text() for k in (client, encrypted, pem)))
    as_root = os.geteuid() == 0
    if as_root:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    user = getpass.getuser()
    (work / "sshd.conf").write_text("\n".join([
        f"Port {port}", f"ListenAddress {host}", f"HostKey {host_key}",
        f"PidFile {work / 'sshd.pid'}", f"AuthorizedKeysFile {authorized}",
        f"AllowUsers {user}", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password", f"UsePAM {'yes' if as_root else 'no'}",
        "StrictModes no", "AllowTcpForwarding yes", "UseDNS no", "LogLevel VERBOSE",
        "ForceCommand /bin/false", ""]))
    sshd = find_tool("sshd")
    assert sshd is not None
    with open(work / "sshd.log", "ab") as log_file:
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(work / "sshd.conf")],
                                stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_ssh_answers(host, port, timeout=10)
        known = work / "known_hosts"
        known.write_text(f"{known_hosts_name(host, port)} "
                         + " ".join(Path(f"{host_key}.pub").read_text().split()[:2]) + "\n")
        yield OwnSshd(host, port, user, proc, client, encrypted, pem,
                      HostKeyStore(work / "app_known_hosts", user_known_hosts=known))
    finally:
        with contextlib.suppress(ProcessLookupError):
            for pid in [proc.pid, *descendants(proc.pid)]:
                os.kill(pid, signal.SIGCONT)
        kill_tree(proc.pid)
        proc.wait(5)


@pytest.fixture
def no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


def open_own(own: OwnSshd, **kwargs: object) -> BastionConnection:
    config = kwargs.pop("config", None) or bastion_config(own)
    return BastionConnection.open(own.host, own.port, config,  # type: ignore[arg-type]
                                  hostkeys=own.store, profile="own", **kwargs)  # type: ignore[arg-type]


# --- readiness ----------------------------------------------------------------------------

def test_readiness_waits_for_a_port_that_starts_answering_later() -> None:
    port = free_port("127.0.0.1")

    def serve_later() -> None:
        time.sleep(1.2)
        with socket.create_server(("127.0.0.1", port)) as srv:
            srv.settimeout(10)
            conn, _ = srv.accept()
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_fake\r\n")
                time.sleep(0.2)

    thread = threading.Thread(target=serve_later, daemon=True)
    thread.start()
    reports: list[tuple[str, str]] = []
    waited = wait_until_ssh_answers("127.0.0.1", port, timeout=10,
                                    progress=lambda *a: reports.append(a))
    thread.join(5)
    assert 1.1 <= waited < 5
    assert reports and reports[0] == ("waiting for SSH", "0 s, connection refused")
    assert len(reports) <= 3, reports  # at most about once a second


def test_readiness_times_out_on_a_closed_port_naming_what_it_waited_for() -> None:
    port = free_port("127.0.0.1")
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        wait_until_ssh_answers("127.0.0.1", port, timeout=1)
    assert time.monotonic() - started < 2.5
    assert caught.value.message == (f"the bastion 127.0.0.1:{port} did not answer SSH within "
                                    "1 s (last error: connection refused)")


@pytest.mark.parametrize("reply", [b"", b"HTTP/1.1 400 Bad Request\r\n\r\n"])
def test_readiness_ignores_a_port_that_accepts_but_sends_no_ssh_banner(reply: bytes) -> None:
    with listener() as srv:
        port = srv.getsockname()[1]
        held: list[socket.socket] = []

        def accept_forever() -> None:
            with contextlib.suppress(OSError):
                while True:
                    conn, _ = srv.accept()
                    conn.sendall(reply)
                    held.append(conn)

        threading.Thread(target=accept_forever, daemon=True).start()
        with pytest.raises(WaitTimeout) as caught:
            wait_until_ssh_answers("127.0.0.1", port, timeout=2)
    expected = "sent nothing" if not reply else "'HTTP/1.1 400 Bad Request', which is not SSH"
    assert expected in caught.value.message


def test_readiness_refuses_a_non_loopback_address_before_probing() -> None:
    with pytest.raises(LoopbackViolation, match=r"SSH readiness probe to 10\.0\.0\.1"):
        wait_until_ssh_answers("10.0.0.1", 22, timeout=1)


# --- connecting and authenticating ---------------------------------------------------------

def test_identity_file_auth_connects_fast_and_reads_the_db_greeting_through_a_channel(
        bastion: Sandbox, tmp_path: Path, no_agent: None) -> None:
    with open_sandbox(bastion, tmp_path) as conn:
        assert conn.alive and conn.connect_seconds < 2
        assert conn.transport.remote_cipher == "aes128-gcm@openssh.com"
        chan = conn.open_channel(bastion.db_host, bastion.db_port)
        chan.settimeout(5)
        greeting = chan.recv(256)
        assert b"MariaDB" in greeting  # the MySQL protocol's server greeting
        chan.close()
    assert not conn.alive


def test_open_channel_to_a_closed_port_names_it(bastion: Sandbox, tmp_path: Path,
                                                no_agent: None) -> None:
    port = free_port(bastion.db_host)
    with open_sandbox(bastion, tmp_path) as conn:
        with pytest.raises(SSHError) as caught:
            conn.open_channel(bastion.db_host, port, timeout=5)
        assert f"{bastion.db_host}:{port}" in caught.value.message
        assert "connect failed" in caught.value.message
        assert conn.alive  # one refused channel does not hurt the transport


def test_wrong_user_is_an_ssh_error_that_says_what_was_tried(bastion: Sandbox, tmp_path: Path,
                                                             no_agent: None) -> None:
    config = bastion_config(bastion, user="nobody-here")
    with pytest.raises(SSHError) as caught:
        open_sandbox(bastion, tmp_path, config=config)
    assert caught.value.message == (
        "authentication to the bastion as nobody-here failed "
        f"(tried key {bastion.client_key}): check user and identity_file")


def test_no_identity_file_and_no_agent_says_so(bastion: Sandbox, tmp_path: Path,
                                               no_agent: None) -> None:
    with pytest.raises(SSHError, match="no identity_file is configured and ssh-agent holds no"):
        open_sandbox(bastion, tmp_path, config=bastion_config(bastion, identity_file=None))


def test_connection_refused_names_the_address_and_the_security_group(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    config = BastionConfig("i-0123456789abcdef0", None, "ec2-user", None, port=port)
    with pytest.raises(SSHError) as caught:
        BastionConnection.open("127.0.0.1", port, config, profile="foo", timeout=2,
                               hostkeys=HostKeyStore(tmp_path / "kh"))
    assert caught.value.message == f"cannot connect to the bastion at 127.0.0.1:{port}: " \
                                   "connection refused"
    assert "security group allows SSH" in (caught.value.hint or "")


def test_a_port_that_does_not_speak_ssh_is_a_handshake_error(tmp_path: Path) -> None:
    with listener() as srv:
        port = srv.getsockname()[1]

        def answer_http() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                time.sleep(1)

        threading.Thread(target=answer_http, daemon=True).start()
        config = BastionConfig("i-0123456789abcdef0", None, "ec2-user", None, port=port)
        with pytest.raises(SSHError, match=f"SSH handshake with the bastion at 127.0.0.1:{port}"):
            BastionConnection.open("127.0.0.1", port, config, profile="foo", timeout=3,
                                   hostkeys=HostKeyStore(tmp_path / "kh"))


def test_loopback_guard_refuses_a_real_address_without_connecting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dialed: list[object] = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: dialed.append(a))
    config = BastionConfig("i-0123456789abcdef0", None, "ec2-user", None)
    with pytest.raises(LoopbackViolation, match=r"refusing SSH connection to 10\.0\.0\.1"):
        BastionConnection.open("10.0.0.1", 22, config, profile="foo",
                               hostkeys=HostKeyStore(tmp_path / "kh"))
    assert dialed == []


@pytest.mark.parametrize("which", ["encrypted_key", "encrypted_pem"])
def test_encrypted_key_asks_the_passphrase_callback_and_never_logs_it(
        own_sshd: OwnSshd, no_agent: None, caplog: pytest.LogCaptureFixture, which: str) -> None:
    key: Path = getattr(own_sshd, which)
    asked: list[Path] = []

    def passphrase(path: Path) -> str:
        asked.append(path)
        return PASSPHRASE

    caplog.set_level(logging.DEBUG)
    with open_own(own_sshd, config=bastion_config(own_sshd, identity_file=key),
                  passphrase=passphrase) as conn:
        assert conn.alive
    assert asked == [key]
    assert PASSPHRASE not in caplog.text


def test_wrong_passphrase_says_so(own_sshd: OwnSshd, no_agent: None) -> None:
    config = bastion_config(own_sshd, identity_file=own_sshd.encrypted_key)
    with pytest.raises(SSHError, match=r"wrong passphrase for identity_file .*encrypted"):
        open_own(own_sshd, config=config, passphrase=lambda _: "not it")
    with pytest.raises(SSHError, match="no passphrase given"):
        open_own(own_sshd, config=config, passphrase=lambda _: None)
    with pytest.raises(SSHError, match="is encrypted and no passphrase can be asked") as caught:
        open_own(own_sshd, config=config)
    assert "ssh-add" in (caught.value.hint or "")


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        yield sock
    finally:
        proc.terminate()
        proc.wait(5)


def test_agent_keys_authenticate_when_no_identity_file_is_set(
        own_sshd: OwnSshd, agent: Path, tmp_path: Path) -> None:
    decoy = keygen(tmp_path / "decoy")  # tried first, refused, then the right one
    for key in (decoy, own_sshd.client_key):
        subprocess.run(["ssh-add", "-q", str(key)], check=True, capture_output=True)
    with open_own(own_sshd, config=bastion_config(own_sshd, identity_file=None)) as conn:
        assert conn.alive


def test_encrypted_identity_held_by_the_agent_is_used_without_asking(
        own_sshd: OwnSshd, agent: Path, tmp_path: Path) -> None:
    plain = tmp_path / "decrypted"
    plain.write_bytes(own_sshd.encrypted_key.read_bytes())
    plain.chmod(0o600)
    subprocess.run(["ssh-keygen", "-p", "-q", "-P", PASSPHRASE, "-N", "", "-f", str(plain)],
                   check=True, capture_output=True)
    subprocess.run(["ssh-add", "-q", str(plain)], check=True, capture_output=True)

    def must_not_ask(path: Path) -> str:
        raise AssertionError("asked for a passphrase the agent made unnecessary")

    config = bastion_config(own_sshd, identity_file=own_sshd.encrypted_key)
    with open_own(own_sshd, config=config, passphrase=must_not_ask) as conn:
        assert conn.alive


def test_all_keys_refused_lists_what_was_tried(own_sshd: OwnSshd, agent: Path,
                                               tmp_path: Path) -> None:
    for name in ("a", "b"):
        subprocess.run(["ssh-add", "-q", str(keygen(tmp_path / name))], check=True,
                       capture_output=True)
    stranger = keygen(tmp_path / "stranger")
    with pytest.raises(SSHError) as caught:
        open_own(own_sshd, config=bastion_config(own_sshd, identity_file=stranger))
    assert caught.value.message == (f"authentication to the bastion as {own_sshd.user} failed "
                                    f"(tried key {stranger}, 2 agent keys): check user and "
                                    "identity_file")


# --- liveness -----------------------------------------------------------------------------

class LostRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []
        self.event = threading.Event()

    def __call__(self, reason: str) -> None:
        self.calls.append((time.monotonic(), reason))
        self.event.set()


def test_frozen_bastion_is_declared_dead_within_four_keepalive_intervals(
        own_sshd: OwnSshd, no_agent: None) -> None:
    interval = 0.5
    lost = LostRecorder()
    conn = open_own(own_sshd, keepalive_interval=interval, on_lost=lost)
    time.sleep(2 * interval)
    assert conn.alive and not lost.calls  # keepalives get answered while sshd runs
    frozen = own_sshd.pids()
    try:
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        assert lost.event.wait(10 * interval), "on_lost never called for a frozen peer"
        took = lost.calls[0][0] - stopped_at
        print(f"declared dead {took:.2f} s after SIGSTOP")
        assert took <= 4 * interval + 0.5, f"took {took:.2f} s"
        assert not conn.alive
        assert "stopped answering" in lost.calls[0][1]
        assert conn.lost_reason == lost.calls[0][1]
        time.sleep(3 * interval)
        assert len(lost.calls) == 1
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        conn.close()
    with pytest.raises(SSHError, match="stopped answering"):
        conn.open_channel("127.0.0.1", 9)


def test_restarted_sshd_is_reported_lost(bastion: Sandbox, tmp_path: Path,
                                         no_agent: None) -> None:
    lost = LostRecorder()
    conn = open_sandbox(bastion, tmp_path, keepalive_interval=0.5, on_lost=lost)
    try:
        bastion.restart_bastion_sshd()
        assert lost.event.wait(5), "on_lost not called after sshd restarted"
        assert "closed the connection" in lost.calls[0][1]
        assert not conn.alive
        time.sleep(1)
        assert len(lost.calls) == 1
    finally:
        conn.close()


def test_close_is_idempotent_stops_the_monitor_and_is_not_a_loss(
        own_sshd: OwnSshd, no_agent: None) -> None:
    lost = LostRecorder()
    conn = open_own(own_sshd, keepalive_interval=0.5, on_lost=lost)
    monitors = [t for t in threading.enumerate() if t.name == "bastion-keepalive[own]"]
    assert len(monitors) == 1
    conn.close()
    conn.close()
    assert not conn.alive and not monitors[0].is_alive()
    time.sleep(1)
    assert lost.calls == []
