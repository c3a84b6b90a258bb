"""EC2 Instance Connect in process, against the sandbox's front (its SendSSHPublicKey) and the
real OpenSSH sshd whose AuthorizedKeysCommand believes it: the in-memory key, the push and its
errors, a key that expired is refused, and an ssh master restarted later gets a key of its own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from bastion_tray.adapters import dataplane
from bastion_tray.adapters.dataplane import DataPlaneLink
from bastion_tray.adapters.hostkeys import HostKeyStore
from bastion_tray.adapters.instance_connect import InstanceConnect, KeySource, new_key, public_line
from bastion_tray.adapters.muxwatch import MuxWatch
from bastion_tray.adapters.ssh import BastionConnection, InstanceKey
from bastion_tray.core.config import BastionConfig, Profile
from bastion_tray.core.errors import CloudError, SSHError
from bastion_tray.sandbox import Sandbox
from bastion_tray.sandbox.instance_connect import InstanceConnectFront
from tests.test_session_count import no_agent, real_bastion  # noqa: F401

pytestmark = pytest.mark.timeout(120)

UNKNOWN = "i-0123456789abcdef0"


@pytest.fixture
def sandbox_env(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    """This process's boto3 pointed at the sandbox (its front for ec2-instance-connect)."""
    for key in [k for k in __import__("os").environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in sandbox.env.items():
        monkeypatch.setenv(key, value)
    return sandbox


def front(sb: Sandbox) -> InstanceConnectFront:
    assert sb.instance_connect is not None
    return sb.instance_connect


def bastion_config(sb: Sandbox) -> BastionConfig:
    return BastionConfig(sb.bastion_instance_id, None, sb.user, None, port=sb.bastion_port,
                         identity="ec2-instance-connect")


@pytest.fixture
def handle(sandbox_env: Sandbox) -> Iterator[InstanceConnect]:
    profile = Profile("foo", sandbox_env.region, None, bastion_config(sandbox_env))
    with InstanceConnect(profile) as eic:
        yield eic


def open_link(sb: Sandbox, tmp_path: Path, key: InstanceKey) -> BastionConnection:
    store = HostKeyStore(tmp_path / "known_hosts", user_known_hosts=sb.known_hosts)
    return BastionConnection.open(sb.eip, sb.bastion_port, bastion_config(sb), hostkeys=store,
                                  profile="foo", instance_key=key)


@pytest.fixture
def short_validity(sandbox: Sandbox) -> Iterator[float]:
    """Pushed keys valid 2 s instead of AWS's 60 s, for this test only."""
    eic = front(sandbox)
    before, eic.validity = eic.validity, 2.0
    yield eic.validity
    eic.validity = before


def test_a_new_key_is_ed25519_in_memory_and_signs() -> None:
    key = new_key()
    other = new_key()
    assert key.get_name() == "ssh-ed25519"
    assert public_line(key).startswith("ssh-ed25519 AAAA") and len(public_line(key).split()) == 2
    assert public_line(key) != public_line(other)  # fresh each time
    signature = key.sign_ssh_data(b"data")
    assert paramiko.Ed25519Key(data=key.asbytes()).verify_ssh_sig(
        b"data", paramiko.Message(signature.asbytes()))


def test_a_pushed_key_opens_the_real_sshd_and_an_unpushed_one_does_not(
        real_bastion: Sandbox, handle: InstanceConnect, tmp_path: Path,  # noqa: F811
        no_agent: None) -> None:  # noqa: F811
    with pytest.raises(SSHError, match="refused the key just pushed"):
        open_link(real_bastion, tmp_path, new_key)  # generated, never pushed
    pushes = len(front(real_bastion).pushes)
    keys = KeySource(handle, lambda: real_bastion.bastion_instance_id, real_bastion.user)
    with open_link(real_bastion, tmp_path, keys) as conn:
        assert conn.run("echo in", 10).strip() == "in"
    assert front(real_bastion).pushes[pushes:] == [
        (real_bastion.bastion_instance_id, real_bastion.user, public_line(conn.auth_key))]


def test_an_expired_pushed_key_is_refused_by_sshd(
        real_bastion: Sandbox, handle: InstanceConnect, tmp_path: Path,  # noqa: F811
        short_validity: float, no_agent: None) -> None:  # noqa: F811
    eic = front(real_bastion)
    pushed = handle.fresh_key(real_bastion.bastion_instance_id, real_bastion.user)
    expiry = eic.expiry_of(real_bastion.bastion_instance_id, real_bastion.user,
                           public_line(pushed.key))
    assert expiry is not None and expiry - eic.now() <= short_validity
    while eic.now() <= expiry:  # by the front's clock, the clock sshd's command reads too
        time.sleep(min(0.2, max(0.01, expiry - eic.now() + 0.01)))
    with pytest.raises(SSHError, match="refused the key just pushed"):
        open_link(real_bastion, tmp_path, lambda: pushed.key)
    # the same path with a key pushed just now is let in: the refusal was the expiry's
    with open_link(real_bastion, tmp_path,
                   lambda: handle.fresh_key(real_bastion.bastion_instance_id,
                                            real_bastion.user).key) as conn:
        assert conn.alive


def test_a_push_to_an_unknown_instance_says_so(handle: InstanceConnect) -> None:
    with pytest.raises(CloudError, match=f"cannot find instance {UNKNOWN}") as err:
        handle.fresh_key(UNKNOWN, "ec2-user")
    assert "instance_id" in (err.value.hint or "")


def test_a_push_to_a_stopped_instance_says_it_is_not_running(
        fresh_sandbox: Sandbox, handle: InstanceConnect) -> None:
    with pytest.raises(CloudError, match="not running") as err:
        handle.fresh_key(fresh_sandbox.bastion_instance_id, fresh_sandbox.user, "the bastion")
    assert f"the bastion {fresh_sandbox.bastion_instance_id}" in err.value.message
    assert "start" in (err.value.hint or "")


def test_a_denied_push_names_the_permission(sandbox: Sandbox, handle: InstanceConnect) -> None:
    front(sandbox).deny(sandbox.appserver_instance_id)
    try:
        with pytest.raises(CloudError) as err:
            handle.fresh_key(sandbox.appserver_instance_id, sandbox.user, "host appserver")
    finally:
        front(sandbox).deny(sandbox.appserver_instance_id, False)
    assert err.value.message.startswith(
        f"ec2-instance-connect:SendSSHPublicKey is not allowed for host appserver "
        f"{sandbox.appserver_instance_id}")
    assert "IAM policy" in (err.value.hint or "") and "identity_file" in (err.value.hint or "")


def test_a_key_source_reuses_a_key_only_briefly(sandbox: Sandbox,
                                                handle: InstanceConnect) -> None:
    pushes = front(sandbox).pushes
    before = len(pushes)
    keys = KeySource(handle, lambda: sandbox.appserver_instance_id, sandbox.user)
    first, again = keys(), keys()
    assert first is again and len(pushes) == before + 1  # the master right after its link
    later = KeySource(handle, lambda: sandbox.appserver_instance_id, sandbox.user,
                      reuse_within=0.0)
    assert later() is not later() and len(pushes) == before + 3
    with pytest.raises(CloudError, match="no instance id known"):
        KeySource(handle, lambda: None, sandbox.user, "the bastion")()


def test_a_restarted_ssh_master_gets_a_freshly_pushed_key(
        real_bastion: Sandbox, handle: InstanceConnect, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, no_agent: None) -> None:  # noqa: F811
    pushes = front(real_bastion).pushes
    before = len(pushes)
    keys = KeySource(handle, lambda: real_bastion.bastion_instance_id, real_bastion.user)
    conn = open_link(real_bastion, tmp_path, keys)
    watch = MuxWatch()
    plane = DataPlaneLink(conn, bastion_config(real_bastion), mode="openssh", watch=watch,
                          keepalive_interval=15, master_key=keys).start()
    try:
        assert plane.data_plane == "openssh"
        assert len(pushes) == before + 1  # the master started at once: the link's key
        master = plane._master
        assert master is not None
        master._proc.kill()
        master._proc.wait(10)
        keys._reuse_within = 0.0  # as if the link were older than REUSE_WITHIN
        monkeypatch.setattr(dataplane, "RESTART_AFTER", 0.0)
        assert plane._usable_master() is not None
        assert plane.data_plane == "openssh"
        assert len(pushes) == before + 2
        assert pushes[-1][2] != pushes[-2][2]  # a new key, not the one the link had
    finally:
        plane.close()
        watch.close()


def _list_identities(path: Path) -> int:
    """How many keys the agent at `path` lists (draft-miller-ssh-agent REQUEST_IDENTITIES)."""
    import socket
    import struct

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall(struct.pack(">IB", 1, 11))
        size = struct.unpack(">I", sock.recv(4))[0]
        reply = b""
        while len(reply) < size:
            reply += sock.recv(size - len(reply))
    assert reply[0] == 12  # IDENTITIES_ANSWER
    return int(struct.unpack(">I", reply[1:5])[0])


def test_the_pushing_agent_offers_a_pushed_key_or_none_when_the_push_fails(
        sandbox: Sandbox, handle: InstanceConnect, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    from bastion_tray.adapters.instance_connect import PushingAgent

    pushes = front(sandbox).pushes
    good = PushingAgent(KeySource(handle, lambda: sandbox.appserver_instance_id, sandbox.user),
                        tmp_path / "good.sock", "test")
    bad = PushingAgent(KeySource(handle, lambda: UNKNOWN, sandbox.user),
                       tmp_path / "bad.sock", "test")
    try:
        before = len(pushes)
        assert _list_identities(good.path) == 1
        assert len(pushes) == before + 1 and pushes[-1][0] == sandbox.appserver_instance_id
        assert oct(good.path.stat().st_mode & 0o777) == "0o600"
        assert _list_identities(bad.path) == 0
        assert f"cannot find instance {UNKNOWN}" in caplog.text
    finally:
        good.close()
        bad.close()
    assert not good.path.exists() and not bad.path.exists()


def test_an_unreachable_endpoint_names_the_variable_that_chooses_it(
        sandbox_env: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT", "http://127.0.0.1:1")
    profile = Profile("foo", sandbox_env.region, None, bastion_config(sandbox_env))
    with InstanceConnect(profile) as eic, pytest.raises(CloudError) as err:
        eic.fresh_key(sandbox_env.bastion_instance_id, sandbox_env.user, "the bastion")
    assert err.value.message.startswith(
        "cannot reach the EC2 Instance Connect API at http://127.0.0.1:1 to push a key for the "
        f"bastion {sandbox_env.bastion_instance_id}")
    assert "AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT" in (err.value.hint or "")


def test_no_credentials_is_a_credentials_error(sandbox_env: Sandbox,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion_tray.core.errors import CredentialsError

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    profile = Profile("foo", sandbox_env.region, None, bastion_config(sandbox_env))
    with InstanceConnect(profile) as eic, pytest.raises(CredentialsError,
                                                       match="no AWS credentials were found"):
        eic.fresh_key(sandbox_env.bastion_instance_id, sandbox_env.user)
