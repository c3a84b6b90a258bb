"""First contact verified from the instance's console output (issue 12 item 3), end to end.

The sandbox plays AWS's part: its moto answers GetConsoleOutput with Amazon-Linux-like text that
holds the fingerprint of its real sshd's host key (sandbox/motoserver.py, sandbox/console.py).
Each test here runs the real CLI and daemon against that moto and sshd, and changes what the
console says with `Sandbox.set_console_output`.

Decided: a key that the app already knows differently (a changed key) stays refused even when
the console lists the new one — the console only ever speaks on first contact, when nothing at
all is known for the host; replacing a known key stays a human decision.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion_tray.adapters.console import DENIED, console_verdict
from bastion_tray.adapters.hostkeys import HostKeyStore, fetch_host_key, fingerprint
from bastion_tray.adapters.ssh import BastionConnection
from bastion_tray.core.config import BastionConfig
from bastion_tray.core.console_keys import UNAVAILABLE, VERIFIED
from bastion_tray.core.errors import HostKeyError
from bastion_tray.core.trust import bastion_target
from bastion_tray.sandbox import Sandbox
from bastion_tray.sandbox.console import amazon_linux_output
from bastion_tray.sandbox.keys import fingerprint as line_fingerprint
from tests.support.app import App
from tests.support.console import no_console_output
from tests.test_cloud import make_profile, use_aws_env
from tests.test_cloud_team import auth_moto

pytestmark = pytest.mark.timeout(120)

#: a real ed25519 public key that no sandbox sshd holds
OTHER_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
OTHER_FP = line_fingerprint(OTHER_LINE)
#: the live console of a bastion started again later: cloud-init prints the keys at first boot only
LATER_BOOT = ("[    0.000000] Linux version 6.1.115-126.197.amzn2023.x86_64\r\n"
              "[   11.5] cloud-init[1986]: Cloud-init v. 22.2.2 finished. Up 11.59 seconds\r\n")
VERIFIED_LOG = re.compile(r"host key (SHA256:\S+) of foo-bastion verified from the instance's "
                          r"console output \(instance (i-[0-9a-f]+)\)")


@pytest.fixture
def console(fresh_sandbox: Sandbox) -> Iterator[Sandbox]:
    """The fresh sandbox; whatever a test does to the console output is undone after it."""
    try:
        yield fresh_sandbox
    finally:
        fresh_sandbox.restore_console_output()


def key_of(line: str) -> str:
    return line.split()[1]


# --- the sandbox plays AWS's part ----------------------------------------------------------------


def test_sandbox_console_output_holds_the_real_sshd_fingerprints(console: Sandbox) -> None:
    ec2 = console.ec2()
    for instance_id, line in ((console.bastion_instance_id, console.bastion_host_key_line),
                              (console.appserver_instance_id, console.appserver_host_key_line)):
        reply = ec2.get_console_output(InstanceId=instance_id, Latest=True)
        assert reply["InstanceId"] == instance_id
        output = reply["Output"]  # botocore has decoded EC2's base64 already
        assert "ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----\r\n" in output  # as EC2's
        assert f"256 {line_fingerprint(line)} root@" in output
        assert key_of(line) in output
    console.set_console_output(console.bastion_instance_id, LATER_BOOT, latest=True)
    latest = ec2.get_console_output(InstanceId=console.bastion_instance_id, Latest=True)
    assert latest["Output"] == LATER_BOOT
    snapshot = ec2.get_console_output(InstanceId=console.bastion_instance_id)["Output"]
    assert line_fingerprint(console.bastion_host_key_line) in snapshot
    console.set_console_output(console.bastion_instance_id, None)
    console.set_console_output(console.bastion_instance_id, None, latest=True)
    output = ec2.get_console_output(InstanceId=console.bastion_instance_id)["Output"]
    assert output.startswith("Linux version") and "SSH HOST KEY" not in output  # moto's own


# --- the daemon's first contact ------------------------------------------------------------------


def test_first_contact_is_verified_from_the_console_output_with_no_prompt(
        console: Sandbox, make_app: type[App]) -> None:
    app = make_app(trusted=False)
    assert not app.known_hosts.exists()
    proc = app.cli("up", "foo")  # no terminal, nobody to ask
    assert proc.returncode == 0, proc.stderr + app.log()
    assert app.known_hosts.read_text() == f"foo-bastion {console.bastion_host_key_line}\n"
    assert stat.S_IMODE(app.known_hosts.stat().st_mode) == 0o600
    found = VERIFIED_LOG.search(app.log())
    assert found, app.log()
    assert found.groups() == (console.bastion_host_key_fingerprint, console.bastion_instance_id)
    assert app.status()["bastion"]["ssh"] == "connected"
    # the recorded line is what OpenSSH clients (shell, ssh-config) check against
    assert app.cli("trust", "foo").stdout.rstrip().endswith("already trusted")


def test_a_later_boots_live_output_without_keys_falls_back_to_the_first_boots_snapshot(
        console: Sandbox, make_app: type[App]) -> None:
    """A bastion started many times: its live output (Latest) holds no block any more, the
    snapshot EC2 kept from an earlier boot still does, and host keys outlast reboots."""
    app = make_app(trusted=False)
    console.set_console_output(console.bastion_instance_id, LATER_BOOT, latest=True)
    proc = app.cli("up", "foo")
    assert proc.returncode == 0, proc.stderr + app.log()
    assert VERIFIED_LOG.search(app.log()), app.log()
    assert app.known_hosts.read_text() == f"foo-bastion {console.bastion_host_key_line}\n"


def test_without_console_output_the_unknown_key_error_names_trust(
        console: Sandbox, make_app: type[App]) -> None:
    app = make_app(trusted=False)
    with no_console_output(console):
        proc = app.cli("up", "foo")
    assert proc.returncode == 1, proc.stderr
    assert "unknown host key for bastion foo-bastion" in proc.stderr
    assert console.bastion_host_key_fingerprint in proc.stderr
    assert "not verified from the console output: the console output of instance " \
           f"{console.bastion_instance_id} holds no SSH host key fingerprints" in proc.stderr
    assert "bastion-tray trust foo" in proc.stderr
    assert not app.known_hosts.exists() or "foo-bastion" not in app.known_hosts.read_text()
    assert not VERIFIED_LOG.search(app.log())


def test_console_listing_other_keys_is_refused_loudly_and_nothing_recorded(
        console: Sandbox, make_app: type[App]) -> None:
    app = make_app(trusted=False)
    app.known_hosts.parent.mkdir(parents=True, exist_ok=True)
    app.known_hosts.write_text(console.appserver_known_hosts_line + "\n")  # something, not it
    before = app.known_hosts.read_bytes()
    console.set_console_output(console.bastion_instance_id,
                               amazon_linux_output([OTHER_LINE], "ip-10-0-0-5"))
    proc = app.cli("up", "foo")
    assert proc.returncode == 1, proc.stderr
    assert "HOST KEY NOT IN THE CONSOLE OUTPUT for bastion foo-bastion" in proc.stderr
    assert f"console:   {OTHER_FP} (instance {console.bastion_instance_id})" in proc.stderr
    assert f"presented: {console.bastion_host_key_fingerprint} ssh-ed25519" in proc.stderr
    assert "could be an attack" in proc.stderr and "nothing was recorded" in proc.stderr
    assert f"aws ec2 get-console-output --instance-id {console.bastion_instance_id}" \
        in proc.stderr
    assert app.known_hosts.read_bytes() == before
    assert app.status()["error"]["kind"] == "host_key"


def test_a_changed_key_stays_refused_even_when_the_console_lists_the_presented_one(
        console: Sandbox, make_app: type[App]) -> None:
    """The console output (the default: it lists the sshd's real key) never overrides a key the
    app knows: a changed key is the user's call."""
    app = make_app(trusted=False)
    app.known_hosts.parent.mkdir(parents=True, exist_ok=True)
    app.known_hosts.write_text(f"foo-bastion {OTHER_LINE}\n")
    before = app.known_hosts.read_bytes()
    proc = app.cli("up", "foo")
    assert proc.returncode == 1, proc.stderr
    assert "HOST KEY CHANGED for bastion foo-bastion" in proc.stderr
    assert OTHER_FP in proc.stderr and console.bastion_host_key_fingerprint in proc.stderr
    assert app.known_hosts.read_bytes() == before
    assert not VERIFIED_LOG.search(app.log())


# --- `bastion-tray trust` ------------------------------------------------------------------------


def test_trust_records_without_asking_when_the_console_vouches(
        console: Sandbox, make_app: type[App]) -> None:
    app = make_app(trusted=False)
    proc = app.cli("trust", "foo")  # no terminal and no --yes: only the console can say yes
    assert proc.returncode == 0, proc.stderr + app.log()
    assert console.bastion_host_key_fingerprint in proc.stdout
    assert f"verified from the console output of instance {console.bastion_instance_id}" \
        in proc.stdout
    assert app.known_hosts.read_text() == f"foo-bastion {console.bastion_host_key_line}\n"


def test_trust_yes_refuses_a_key_the_console_does_not_list(
        console: Sandbox, make_app: type[App]) -> None:
    app = make_app(trusted=False)
    console.set_console_output(console.bastion_instance_id,
                               amazon_linux_output([OTHER_LINE], "ip-10-0-0-5"))
    proc = app.cli("trust", "foo", "--yes")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"the console output of instance {console.bastion_instance_id} lists other host " \
           f"keys: {OTHER_FP}" in proc.stdout
    assert "nothing was recorded" in proc.stderr and "--fingerprint" in proc.stderr
    assert not app.known_hosts.exists() or "foo-bastion" not in app.known_hosts.read_text()
    # a fingerprint checked another way and typed in still records it
    right = console.bastion_host_key_fingerprint
    app.cli("trust", "foo", "--fingerprint", right, check=True)
    assert key_of(console.bastion_host_key_line) in app.known_hosts.read_text()


def test_trust_of_a_private_host_with_instance_id_is_verified_from_its_console(
        console: Sandbox, make_app: type[App]) -> None:
    app = make_app()  # the bastion trusted; the app server not
    config = app.config.read_text()
    header = "[profiles.foo.hosts.appserver]\n"
    assert header in config
    app.config.write_text(config.replace(
        header, f'{header}instance_id = "{console.appserver_instance_id}"\n'))
    proc = app.cli("trust", "foo", "appserver")
    assert proc.returncode == 0, proc.stdout + proc.stderr + app.log()
    assert f"verified from the console output of instance {console.appserver_instance_id}" \
        in proc.stdout
    assert f"foo-appserver {console.appserver_host_key_line}" in app.known_hosts.read_text()


def test_shell_without_a_terminal_trusts_a_private_host_its_console_vouches_for(
        console: Sandbox, make_app: type[App]) -> None:
    app = make_app()  # the bastion trusted; the app server not
    header = "[profiles.foo.hosts.appserver]\n"
    app.config.write_text(app.config.read_text().replace(
        header, f'{header}instance_id = "{console.appserver_instance_id}"\n'))
    proc = app.cli("shell", "foo", "appserver", "--", "echo", "through-the-bastion")
    assert proc.returncode == 0, proc.stdout + proc.stderr + app.log()
    assert "through-the-bastion" in proc.stdout
    assert "verified from the console output" in proc.stderr
    assert f"foo-appserver {console.appserver_host_key_line}" in app.known_hosts.read_text()


def test_shell_without_a_terminal_still_refuses_a_host_with_no_console_to_vouch(
        console: Sandbox, make_app: type[App]) -> None:
    app = make_app()  # no instance_id on the app server: nothing can vouch for its key
    proc = app.cli("shell", "foo", "appserver", "--", "true")
    assert proc.returncode != 0
    assert "bastion-tray trust foo appserver" in proc.stderr
    assert "foo-appserver" not in app.known_hosts.read_text()


# --- no permission: the adapter degrades, the store falls back to `trust` -----------------------


def test_denied_get_console_output_falls_back_to_trust_with_the_reason(
        bastion: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials without ec2:GetConsoleOutput (a moto that enforces IAM): the verdict says so,
    and the real sshd's unknown key fails with that reason and the trust hint — the connection
    is refused for the key, never for the permission."""
    with auth_moto(tmp_path / "moto", "team-bastion") as world:
        use_aws_env(monkeypatch, world.env("reader", tmp_path))  # ec2:Describe* only
        from bastion_tray.adapters.cloud import Ec2Cloud

        cloud = Ec2Cloud(make_profile(instance_id=world.instance_id))
        verdict = console_verdict(cloud, bastion.bastion_host_key_fingerprint)
        assert verdict.outcome == UNAVAILABLE and verdict.reason == DENIED
        assert "ec2:GetConsoleOutput is not allowed" in verdict.reason

        store = HostKeyStore(tmp_path / "known_hosts", user_known_hosts=tmp_path / "none",
                             vouch=lambda target, fp: console_verdict(cloud, fp))
        with pytest.raises(HostKeyError) as caught:
            BastionConnection.open(bastion.eip, bastion.bastion_port, BastionConfig(
                instance_id=world.instance_id, name=None, user=bastion.user,
                identity_file=bastion.client_key, port=bastion.bastion_port),
                hostkeys=store, profile="foo", timeout=10)
    error = caught.value
    assert error.message.startswith(f"unknown host key for bastion foo-bastion at "
                                    f"{bastion.eip}:{bastion.bastion_port} (profile foo): "
                                    f"{bastion.bastion_host_key_fingerprint}; not verified from "
                                    "the console output: ec2:GetConsoleOutput is not allowed")
    assert error.hint == "verify it, then run: bastion-tray trust foo"
    assert not (tmp_path / "known_hosts").exists()


def test_store_records_a_console_verified_key_and_then_trusts_it_from_the_file(
        bastion: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """In process against the sandbox's moto and sshd: verified once from the console, then
    known from the app's known_hosts (the console is not asked again)."""
    use_aws_env(monkeypatch, bastion.env)
    from bastion_tray.adapters.cloud import Ec2Cloud

    cloud = Ec2Cloud(make_profile(instance_id=bastion.bastion_instance_id))
    asked: list[str] = []

    def vouch(target: object, fp: str) -> object:
        asked.append(fp)
        return console_verdict(cloud, fp)

    store = HostKeyStore(tmp_path / "state" / "known_hosts", user_known_hosts=tmp_path / "none",
                         vouch=vouch)  # type: ignore[arg-type]
    target = bastion_target("foo", bastion.eip, bastion.bastion_port)
    key = fetch_host_key(bastion.eip, bastion.bastion_port)
    first = store.verify(target, key)
    assert first.trusted and asked == [bastion.bastion_host_key_fingerprint]
    assert first.fingerprint == fingerprint(key)
    assert (tmp_path / "state" / "known_hosts").read_text() == \
        f"foo-bastion {bastion.bastion_host_key_line}\n"
    again = store.verify(target, key)
    assert again.trusted and again.matched is not None and again.matched.line == 1
    assert asked == [bastion.bastion_host_key_fingerprint]  # not asked again
    assert console_verdict(cloud, OTHER_FP).outcome == "mismatch"
    assert console_verdict(cloud, bastion.bastion_host_key_fingerprint).outcome == VERIFIED
    assert os.stat(tmp_path / "state" / "known_hosts").st_mode & 0o077 == 0
