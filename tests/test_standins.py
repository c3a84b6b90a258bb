"""The sandbox on its embedded stand-ins (issue #5): a paramiko bastion that only forwards to
loopback, a line-echo "database". Forced with `standins=True`, so this runs with or without
OpenSSH sshd and MariaDB installed; the real-peer path is test_sandbox.py's."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import paramiko
import pytest

from bastion_tray.sandbox import Sandbox, SandboxError
from bastion_tray.sandbox.net import free_port
from bastion_tray.sandbox.prereqs import standin_note
from bastion_tray.sandbox.procs import is_alive
from bastion_tray.sandbox.standins import SERVER_VERSION, _relay, generate_ed25519
from tests.support.app import App, wait_until

pytestmark = pytest.mark.timeout(60)

ADMINISTRATIVELY_PROHIBITED = paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
CONNECT_FAILED = paramiko.OPEN_FAILED_CONNECT_FAILED


@pytest.fixture(scope="module")
def standin_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox.start(tmp_path_factory.mktemp("standins"), standins=True) as sb:
        yield sb


@pytest.fixture
def sb(standin_sandbox: Sandbox) -> Sandbox:
    """The module's stand-in sandbox with its bastion instance stopped and its SSH down."""
    standin_sandbox.reset()
    return standin_sandbox


def start_bastion(sb: Sandbox) -> None:
    sb.ec2().start_instances(InstanceIds=[sb.bastion_instance_id])
    sb.wait_bastion_ssh(True, sb.boot_delay + 5)


@contextmanager
def ssh(sb: Sandbox, *, key: Path | None = None, user: str | None = None,
        port: int | None = None, host: str | None = None) -> Iterator[paramiko.SSHClient]:
    """An authenticated client, the host key checked against sb.known_hosts (RejectPolicy)."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(sb.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(host or sb.eip, port or sb.bastion_port, username=user or sb.user,
                       key_filename=str(key or sb.client_key), allow_agent=False,
                       look_for_keys=False, timeout=5)
        yield client
    finally:
        client.close()


def transport_of(client: paramiko.SSHClient) -> paramiko.Transport:
    transport = client.get_transport()
    assert transport is not None
    return transport


def forward(client: paramiko.SSHClient, host: str, port: int) -> paramiko.Channel:
    """What `ssh -W host:port` and bastion-tray's forwards ask the bastion for."""
    return transport_of(client).open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0),
                                             timeout=5)


def active(client: paramiko.SSHClient) -> bool:
    transport = client.get_transport()
    return transport is not None and transport.is_active()


def read_line(sock: socket.socket | paramiko.Channel) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


def read_to_eof(sock: socket.socket | paramiko.Channel) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_the_sandbox_says_what_stands_in(standin_sandbox: Sandbox) -> None:
    sb = standin_sandbox
    assert sb.standins
    assert "SSH bastion (port forwarding only, runs no commands)" in sb.standin_note
    assert "line-echo service (not MySQL)" in sb.standin_note
    assert {name.split(":")[0] for name in sb.pids()} == {"moto"}  # no sshd, no mariadbd
    assert (sb.db_name, sb.db_user, sb.db_password) == ("", "", "")


@pytest.mark.parametrize(("missing", "expected"), [
    (["openssh-server", "mariadb-server"], ["OpenSSH sshd not installed: a built-in SSH bastion",
                                            "MariaDB not installed: a line-echo service"]),
    (["mariadb-client"], ["mariadb-client not installed: a line-echo service",
                          "with it, a built-in SSH bastion"]),
    ([], ["stand-ins requested: a built-in SSH bastion"]),
])
def test_the_note_says_what_is_missing(missing: list[str], expected: list[str]) -> None:
    note = standin_note(missing)
    assert [part for part in expected if part not in note] == [], note


def test_bastion_follows_the_instance_with_a_boot_delay(sb: Sandbox) -> None:
    assert not sb.bastion_ssh_up()
    started = time.monotonic()
    sb.ec2().start_instances(InstanceIds=[sb.bastion_instance_id])
    while time.monotonic() - started < sb.boot_delay / 2:
        assert not sb.bastion_ssh_up(), "the stand-in answered before the boot delay"
        time.sleep(0.1)
    sb.wait_bastion_ssh(True, sb.boot_delay + 2)
    assert time.monotonic() - started >= sb.boot_delay

    stopped = time.monotonic()
    sb.ec2().stop_instances(InstanceIds=[sb.bastion_instance_id])
    sb.wait_bastion_ssh(False, 3)
    assert time.monotonic() - stopped < 1.5


def test_a_forward_to_the_database_greets_echoes_and_half_closes(sb: Sandbox) -> None:
    start_bastion(sb)
    with ssh(sb) as client:
        assert transport_of(client).remote_version == SERVER_VERSION
        channel = forward(client, sb.db_host, sb.db_port)
        assert read_line(channel).decode().startswith("stand-in database (")
        channel.sendall(b"hello through the bastion\n")
        assert read_line(channel) == b"hello through the bastion\n"
        # our EOF reaches the database, its answer still comes back, then its EOF reaches us
        channel.sendall(b"no newline")
        channel.shutdown_write()
        assert read_to_eof(channel) == b"no newline"


def test_only_the_sandbox_key_and_user_get_in(sb: Sandbox, tmp_path: Path) -> None:
    start_bastion(sb)
    stranger = generate_ed25519(tmp_path / "stranger_ed25519", "stranger")
    with pytest.raises(paramiko.AuthenticationException), ssh(sb, key=stranger.private):
        pass
    with pytest.raises(paramiko.AuthenticationException), ssh(sb, user=sb.user + "-not"):
        pass


def test_the_server_refuses_to_forward_off_loopback(sb: Sandbox) -> None:
    start_bastion(sb)
    with ssh(sb) as client:
        # refused by the stand-in's policy before any connect: a connect would have tripped this
        # process's loopback guard inside paramiko's thread, never this clean refusal
        for host in ("10.0.0.1", "db.internal", "0.0.0.0"):
            with pytest.raises(paramiko.ChannelException) as refused:
                forward(client, host, 3306)
            assert refused.value.code == ADMINISTRATIVELY_PROHIBITED, host
        # like sshd: a loopback port where nothing listens is "connect failed"
        with pytest.raises(paramiko.ChannelException) as failed:
            forward(client, sb.db_host, free_port(sb.db_host))
        assert failed.value.code == CONNECT_FAILED
        assert active(client)
        assert read_line(forward(client, sb.db_host, sb.db_port))  # refusals broke nothing


def test_no_command_runs_through_the_standins(sb: Sandbox) -> None:
    start_bastion(sb)
    for host, port in ((sb.eip, sb.bastion_port), (sb.appserver_host, sb.appserver_port)):
        with ssh(sb, host=host, port=port) as client:
            # no session channel, so neither exec nor shell nor sftp can even be asked for
            with pytest.raises(paramiko.ChannelException) as refused:
                client.exec_command("sudo shutdown -h now", timeout=5)
            assert refused.value.code == ADMINISTRATIVELY_PROHIBITED
            with pytest.raises(paramiko.ChannelException):
                client.invoke_shell()
            with pytest.raises(paramiko.SSHException, match="denied"):
                transport_of(client).request_port_forward("127.0.0.1", 0)
            assert active(client)
    assert sb.instance_state() == "running"
    assert sb.stub_calls() == []


def test_the_app_server_stand_in_forwards_nothing(sb: Sandbox) -> None:
    with ssh(sb, host=sb.appserver_host, port=sb.appserver_port) as client:
        with pytest.raises(paramiko.ChannelException) as refused:
            forward(client, sb.db_host, sb.db_port)
        assert refused.value.code == ADMINISTRATIVELY_PROHIBITED


def test_stopping_the_instance_drops_open_forwards(sb: Sandbox) -> None:
    start_bastion(sb)
    with ssh(sb) as client:
        channel = forward(client, sb.db_host, sb.db_port)
        read_line(channel)
        sb.ec2().stop_instances(InstanceIds=[sb.bastion_instance_id])
        channel.settimeout(3)
        assert read_to_eof(channel) == b""
        wait_until(lambda: not active(client), 3, "the session to drop")


def test_restart_works_and_freeze_says_it_cannot(sb: Sandbox) -> None:
    start_bastion(sb)
    with ssh(sb) as client:
        sb.restart_bastion_sshd()
        wait_until(lambda: not active(client), 3, "the restart to drop the session")
    with ssh(sb) as client:
        assert read_line(forward(client, sb.db_host, sb.db_port))
    with pytest.raises(SandboxError, match="not supported with the stand-in bastion"):
        sb.freeze_bastion()


class _Releases:
    """What _relay needs of its service: the stop flag, and release() that closes."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.released: list[object] = []

    def release(self, resource: socket.socket | paramiko.Channel) -> None:
        self.released.append(resource)
        resource.close()


def test_relay_survives_a_channel_closed_under_it_that_no_longer_maps_to_its_fd(
        sb: Sandbox) -> None:
    """d0c4826, seen in CI as a KeyError in a relay thread when the bastion restarted under an
    open forward: another thread closed the channel between the relay's select and its recv.
    A closed paramiko channel drops its pipe, so its next fileno() makes a new pipe — a new fd
    — and `selector.unregister(channel)` found nothing registered under it. The relay must
    unregister the fd it registered, pass the EOF on and release both ends."""
    start_bastion(sb)
    with ssh(sb) as client:
        channel = forward(client, sb.db_host, sb.db_port)
        read_line(channel)  # the greeting: nothing stays buffered
        channel.shutdown_write()  # the database answers our EOF with its own
        wait_until(lambda: channel.eof_received, 5, "the database's EOF through the bastion")
        registered_fd = channel.fileno()  # what the relay's selector will register
        target, peer = socket.socketpair()
        held: list[int] = []
        real_recv = channel.recv

        def recv_after_a_close_elsewhere(size: int) -> bytes:
            if not held:
                channel.close()  # what the stopping bastion's release() does meanwhile
                # keep the freed fd taken, so the channel's next pipe cannot reuse its number
                while not held or held[-1] != registered_fd:
                    held.append(os.open(os.devnull, os.O_RDONLY))
                    assert len(held) < 1000, "the registered fd was not freed by close()"
            return real_recv(size)

        channel.recv = recv_after_a_close_elsewhere  # type: ignore[method-assign]
        service = _Releases()
        errors: list[BaseException] = []
        relay = threading.Thread(target=_run_catching, args=(errors, channel, target, service))
        peer.settimeout(5)
        try:
            relay.start()
            assert peer.recv(1) == b"", "the channel's EOF did not reach the destination"
            peer.close()  # now the destination ends too: the relay has nothing left to do
            relay.join(5)
        finally:
            for fd in held:
                os.close(fd)
        assert not relay.is_alive()
        assert errors == []
        assert held, "the channel was never read: the test did not reach the race"
        assert service.released == [channel, target]
        assert channel.closed and target.fileno() == -1


def _run_catching(errors: list[BaseException], *args: object) -> None:
    try:
        _relay(*args)  # type: ignore[arg-type]
    except BaseException as exc:
        errors.append(exc)


def test_the_product_end_to_end_on_the_standins(sb: Sandbox) -> None:
    app = App(sb)
    try:
        local = app.cli("connect", "foo", "db", check=True).stdout.strip().splitlines()[-1]
        host, port = local.rsplit(":", 1)
        assert host == "127.0.0.1"
        assert app.instance_state() == "running"
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            assert read_line(conn).decode().startswith("stand-in database (")
            conn.sendall(b"through bastion-tray\n")
            assert read_line(conn) == b"through bastion-tray\n"
            status = app.status()
            assert status["bastion"]["ssh"] == "connected"
            assert status["forwards"]["db"]["active_connections"] == 1
    finally:
        app.close()
        shutil.rmtree(app.home, ignore_errors=True)


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.timeout(90)
def test_close_leaves_no_thread_listener_or_process_behind(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    with ExitStack() as clients:
        with Sandbox.start(tmp_path / "closing", boot_delay=0.2, standins=True) as sb:
            start_bastion(sb)
            pids = list(sb.pids().values())
            client = clients.enter_context(ssh(sb))
            read_line(forward(client, sb.db_host, sb.db_port))  # a forward open at close()
            listening = [(sb.eip, sb.bastion_port), (sb.appserver_host, sb.appserver_port),
                         (sb.db_host, sb.db_port)]
        wait_until(lambda: not active(client), 3, "close() to drop the session")
        assert sb.pids() == {}
        assert [pid for pid in pids if is_alive(pid)] == []
        assert [address for address in listening if not _refused(*address)] == []
    wait_until(lambda: not set(threading.enumerate()) - before, 5,
               "every stand-in and client thread to end")
