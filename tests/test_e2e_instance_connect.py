"""identity = "ec2-instance-connect" end to end (issue 12): a profile with no key file at all
connects and forwards through the daemon, the OpenSSH data plane included, with keys pushed to
the sandbox's EC2 Instance Connect front and believed by its real sshd; `shell` to a private
host gets its pushed key through the daemon's agent; a refused push says what to do."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bastion_tray.sandbox import Sandbox
from bastion_tray.sandbox.instance_connect import InstanceConnectFront
from tests.support.app import App, alive, wait_until
from tests.test_e2e_engine import local_port, query

pytestmark = pytest.mark.timeout(180)

EIC = {"identity_file": None, "identity": "ec2-instance-connect"}


def front(sb: Sandbox) -> InstanceConnectFront:
    if sb.standins:
        pytest.skip("the stand-in sshd does not consult the EC2 Instance Connect front")
    assert sb.instance_connect is not None
    return sb.instance_connect


def no_key_anywhere(app: App) -> None:
    """The config names no key file, and the app wrote no private key anywhere of its own."""
    config = app.config.read_text()
    assert "identity_file" not in config and 'identity = "ec2-instance-connect"' in config
    for path in app.home.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert b"PRIVATE KEY" not in path.read_bytes(), path


def test_a_profile_with_no_key_file_connects_and_forwards(make_app: type[App]) -> None:
    app = make_app(extra_bastion=EIC, extra_host={"identity_file": None})
    app.env.pop("SSH_AUTH_SOCK", None)  # no agent key may stand in for the pushed one
    sb: Sandbox = app.sandbox
    pushes = front(sb).pushes
    before = len(pushes)
    app.cli("up", "foo", check=True)
    port = local_port(app.cli("connect", "foo", "db", check=True).stdout.strip())
    conn, version = query(port, sb)
    assert "MariaDB" in version
    conn.close()
    status = app.status()
    assert status["bastion"]["ssh"] == "connected"
    assert status["bastion"]["data_plane"] == "openssh", app.log()
    ours = [p for p in pushes[before:] if p[0] == sb.bastion_instance_id]
    assert ours and all(user == sb.user for _, user, _ in ours)
    assert "pushed an ec2-instance-connect key" in app.log()
    no_key_anywhere(app)


def test_shell_to_a_private_host_gets_its_pushed_key_through_the_daemon(
        make_app: type[App], sandbox: Sandbox) -> None:
    app = make_app(extra_bastion=EIC,
                   extra_host={**EIC, "instance_id": sandbox.appserver_instance_id})
    sb: Sandbox = app.sandbox
    app.known_hosts.write_text(sb.trusted_lines())
    app.env.pop("SSH_AUTH_SOCK", None)
    pushes = front(sb).pushes
    before = len(pushes)
    shell = app.cli("shell", "foo", "appserver", "-o", "BatchMode=yes", "--", "echo",
                    "from-appserver")
    assert shell.returncode == 0, shell.stderr + app.log()
    assert shell.stdout.strip() == "from-appserver"
    targets = {instance for instance, _, _ in pushes[before:]}
    assert targets == {sb.bastion_instance_id, sb.appserver_instance_id}
    lent = re.findall(r"is lent on (/\S+/agent\.sock)", app.log())
    assert len(lent) == 1, app.log()
    wait_until(lambda: "the key lent for host appserver is gone" in app.log(), 10,
               "the lent key to go with the session")
    assert not Path(lent[0]).parent.exists()
    no_key_anywhere(app)


def test_a_refused_push_says_which_permission_is_missing(make_app: type[App]) -> None:
    app = make_app(extra_bastion=EIC)
    sb: Sandbox = app.sandbox
    front(sb).deny(sb.bastion_instance_id)
    try:
        proc = app.cli("up", "foo")
    finally:
        front(sb).deny(sb.bastion_instance_id, False)
    assert proc.returncode != 0
    assert "ec2-instance-connect:SendSSHPublicKey is not allowed for the bastion" in proc.stderr
    assert "IAM policy" in proc.stderr


def test_a_private_host_that_is_not_an_instance_fails_clearly(make_app: type[App]) -> None:
    app = make_app(extra_bastion=EIC, extra_host={**EIC, "instance_id": "i-0123456789abcdef0"})
    app.known_hosts.write_text(app.sandbox.trusted_lines())
    proc = app.cli("shell", "foo", "appserver", "-o", "BatchMode=yes", "--", "true")
    assert proc.returncode != 0
    assert "cannot find instance host appserver i-0123456789abcdef0" in proc.stderr, proc.stderr


def test_the_generated_ssh_config_pushes_keys_through_the_daemons_agent(
        make_app: type[App], sandbox: Sandbox, tmp_path: Path) -> None:
    """`ssh foo-bastion` / `ssh foo-appserver` with no key file: the block's IdentityAgent is
    the daemon's socket that pushes a key when ssh asks; ssh starts the daemon itself (the
    ProxyCommand) before it asks."""
    app = make_app(extra_bastion=EIC,
                   extra_host={**EIC, "instance_id": sandbox.appserver_instance_id})
    sb: Sandbox = app.sandbox
    front(sb)
    app.known_hosts.write_text(sb.trusted_lines())
    app.env.pop("SSH_AUTH_SOCK", None)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    app.env["HOME"] = str(home)
    text = app.cli("ssh-config", "foo", check=True).stdout
    assert text.count("IdentityAgent ") == 2 and "IdentityFile" not in text
    config = tmp_path / "ssh_config"
    config.write_text(text)
    pid = app.daemon_pid()  # ssh-config asked the daemon: end it, ssh's ProxyCommand starts one
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not alive(pid), 15, "the daemon to exit")
    for alias, command in (("foo-bastion", "echo on-bastion"),
                           ("foo-appserver", "echo on-appserver")):
        proc = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", alias, command],
                              env=app.env, capture_output=True, text=True, timeout=90)
        assert proc.returncode == 0, proc.stderr + app.log()
        assert proc.stdout.strip() == command.split()[1]
    targets = {instance for instance, _, _ in front(sb).pushes}
    assert {sb.bastion_instance_id, sb.appserver_instance_id} <= targets
    assert list((home / ".ssh").iterdir()) == []


def test_the_built_in_client_gets_the_lent_key_where_no_ssh_binary_exists(
        make_app: type[App], sandbox: Sandbox, tmp_path: Path) -> None:
    app = make_app(extra_bastion=EIC,
                   extra_host={**EIC, "instance_id": sandbox.appserver_instance_id})
    front(app.sandbox)
    app.known_hosts.write_text(app.sandbox.trusted_lines())
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {k: v for k, v in app.env.items() if k != "SSH_AUTH_SOCK"}
    proc = subprocess.run([sys.executable, "-m", "bastion_tray", "shell", "foo", "appserver",
                           "--", "echo", "built-in:$((6*7))"], env={**env, "PATH": str(empty)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + app.log()
    assert "built-in SSH client" in proc.stderr
    assert proc.stdout.strip() == "built-in:42"
    assert "is lent on" in app.log()
