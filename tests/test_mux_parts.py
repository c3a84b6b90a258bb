"""The data plane's small parts against real peers: the private agent as OpenSSH's ssh-add sees
it, the kernel's byte counts of a TCP socket, the mux protocol's framing of a failure."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import paramiko
import pytest

from bastion_tray.adapters.agent import PrivateAgent
from bastion_tray.adapters.mux import _reason
from bastion_tray.adapters.muxwatch import tcp_bytes


@pytest.fixture(params=["rsa", "ecdsa"])
def key(request: pytest.FixtureRequest) -> paramiko.PKey:
    if request.param == "rsa":
        return paramiko.RSAKey.generate(2048)
    return paramiko.ECDSAKey.generate()


def test_ssh_add_lists_exactly_the_one_key_and_the_socket_is_private(key: paramiko.PKey) -> None:
    agent = PrivateAgent(key)
    try:
        mode = os.stat(agent.path).st_mode
        assert stat.S_IMODE(mode) == 0o600
        assert stat.S_IMODE(os.stat(agent.path.parent).st_mode) == 0o700
        listed = subprocess.run(["ssh-add", "-L"], env={**os.environ,
                                                        "SSH_AUTH_SOCK": str(agent.path)},
                                capture_output=True, text=True, timeout=10)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split()[:2] == [key.get_name(), key.get_base64()]
        refused = subprocess.run(["ssh-add", "-D"], env={**os.environ,
                                                         "SSH_AUTH_SOCK": str(agent.path)},
                                 capture_output=True, text=True, timeout=10)
        assert refused.returncode != 0, "the agent takes no orders: it only lists and signs"
    finally:
        agent.close()
    assert not agent.path.exists()


def test_signatures_from_the_agent_verify_with_the_public_key(key: paramiko.PKey) -> None:
    agent = PrivateAgent(key)
    old = os.environ.get("SSH_AUTH_SOCK")
    os.environ["SSH_AUTH_SOCK"] = str(agent.path)
    try:
        client = paramiko.Agent()
        (remote,) = client.get_keys()
        assert remote.asbytes() == key.asbytes()
        algorithm = "rsa-sha2-256" if key.get_name() == "ssh-rsa" else None
        signed = paramiko.Message(remote.sign_ssh_data(b"data to sign", algorithm))
        assert key.verify_ssh_sig(b"data to sign", signed)
        assert not key.verify_ssh_sig(b"other data", paramiko.Message(signed.asbytes()))
        client.close()
    finally:
        if old is None:
            os.environ.pop("SSH_AUTH_SOCK", None)
        else:
            os.environ["SSH_AUTH_SOCK"] = old
        agent.close()


def test_the_kernel_counts_what_a_socket_carried_both_ways() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        with client, peer:
            peer.sendall(b"d" * 100_000)
            client.sendall(b"u" * 1234)
            got = b""
            while len(got) < 1234:
                got += peer.recv(4096)
            received = 0
            while received < 100_000:
                received += len(client.recv(1 << 20))
            deadline = time.monotonic() + 5  # the last ACK may still be on its way
            while tcp_bytes(peer) != (1234, 100_000) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert tcp_bytes(peer) == (1234, 100_000)


def test_a_mux_failure_reason_is_read_from_its_body() -> None:
    body = (7).to_bytes(4, "big") + (9).to_bytes(4, "big") + b"no route!"
    assert _reason(body) == "no route!"
    assert _reason(b"\0\0\0\1") == "no reason given"


def test_the_ready_mark_is_found_past_what_a_login_script_prints(tmp_path: Path) -> None:
    from bastion_tray.adapters.mux import MuxMaster

    control = tmp_path / "c"
    control.touch()
    proc = subprocess.Popen(["sh", "-c", "echo 'Welcome!'; echo; echo bastion-tray-master "
                             "127.0.0.1 40022 127.0.0.2 22; exec sleep 30"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert MuxMaster._wait_ready(proc, control, timeout=10) == ("127.0.0.1", 40022)
    finally:
        proc.kill()
        proc.wait()


def test_a_master_that_never_says_ready_fails_with_its_own_words(tmp_path: Path) -> None:
    from bastion_tray.adapters.mux import MuxMaster
    from bastion_tray.core.errors import SSHError

    proc = subprocess.Popen(["sh", "-c", "echo 'Permission denied (publickey).' >&2; exit 255"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with pytest.raises(SSHError) as caught:
        MuxMaster._wait_ready(proc, tmp_path / "c", timeout=10)
    assert "did not start: Permission denied (publickey)." in caught.value.message
