"""OpenSSH clients that just work (issue 10): host keys by alias, end to end, against the
sandbox's real sshds — trust through the bastion, the generated ssh config with BatchMode, shell,
a changed private key refused, nothing ever written under ~/.ssh."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bastion_tray.sandbox import Sandbox
from bastion_tray.sandbox.keys import fingerprint
from tests.support.app import App

pytestmark = pytest.mark.timeout(240)


def fresh_home(app: App, tmp_path: Path) -> Path:
    """A HOME with an empty ~/.ssh, as a new user has."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    app.env["HOME"] = str(home)
    return home


def ssh(app: App, config: Path, host: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", host, *command],
                          env=app.env, capture_output=True, text=True, timeout=90)


def test_trust_then_openssh_and_shell_work_with_batchmode_and_nothing_lands_in_dot_ssh(
        make_app: type[App], tmp_path: Path) -> None:
    app = make_app(trusted=False)
    home = fresh_home(app, tmp_path)
    sb: Sandbox = app.sandbox
    # the bastion's fingerprint given without its SHA256: prefix is understood
    bare = sb.bastion_host_key_fingerprint.removeprefix("SHA256:")
    app.cli("trust", "foo", "--fingerprint", bare, check=True)
    proc = app.cli("trust", "foo", "appserver", "--yes", check=True)
    assert "host appserver (foo-appserver)" in proc.stdout
    lines = app.known_hosts.read_text().splitlines()
    assert lines == [f"foo-bastion {sb.bastion_host_key_line}",
                     f"foo-appserver {sb.appserver_host_key_line}"]

    config = tmp_path / "ssh_config"
    config.write_text(app.cli("ssh-config", "foo", check=True).stdout)
    text = config.read_text()
    assert text.count("StrictHostKeyChecking yes") == 2
    assert text.count(f"UserKnownHostsFile {app.known_hosts}") == 2
    assert "HostKeyAlias foo-bastion" in text and "HostKeyAlias foo-appserver" in text

    bastion = ssh(app, config, "foo-bastion", "true")
    assert bastion.returncode == 0, bastion.stderr + app.log()
    appserver = ssh(app, config, "foo-appserver", "hostname")
    assert appserver.returncode == 0 and appserver.stdout.strip(), appserver.stderr
    shell = app.cli("shell", "foo", "appserver", "-o", "BatchMode=yes", "--", "hostname")
    assert shell.returncode == 0 and shell.stdout.strip(), shell.stderr
    assert list((home / ".ssh").iterdir()) == [], "nothing may be written under ~/.ssh"
    assert app.known_hosts.read_text().splitlines() == lines  # and nothing added by ssh


def test_a_changed_private_host_key_is_refused_with_both_fingerprints(
        make_app: type[App], tmp_path: Path) -> None:
    app = make_app()
    fresh_home(app, tmp_path)
    sb = app.sandbox
    app.cli("trust", "foo", "appserver", "--yes", check=True)
    before = app.known_hosts.read_bytes()
    again = app.cli("trust", "foo", "appserver", "--yes", check=True)
    assert "already trusted" in again.stdout and app.known_hosts.read_bytes() == before
    old_fingerprint = fingerprint(sb.appserver_host_key_line)
    try:
        new_line = sb.rekey_appserver()
        new_fingerprint = fingerprint(new_line)
        config = tmp_path / "ssh_config"
        config.write_text(app.cli("ssh-config", "foo", check=True).stdout)
        refused = ssh(app, config, "foo-appserver", "true")
        assert refused.returncode == 255
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr or \
            "Host key verification failed" in refused.stderr, refused.stderr

        shell = app.cli("shell", "foo", "appserver", "-o", "BatchMode=yes", "--", "true")
        assert shell.returncode == 255
        assert "HOST KEY CHANGED" in shell.stderr
        assert old_fingerprint in shell.stderr and new_fingerprint in shell.stderr

        trust = app.cli("trust", "foo", "appserver", "--yes")
        assert trust.returncode == 1
        assert "HOST KEY CHANGED" in trust.stderr
        assert old_fingerprint in trust.stderr and new_fingerprint in trust.stderr
        assert app.known_hosts.read_bytes() == before, "a changed key is never replaced"
    finally:
        sb.rekey_appserver()  # a key nobody trusted: later tests trust what they need


def test_an_unknown_private_host_is_refused_until_trusted_and_says_how(
        make_app: type[App], tmp_path: Path) -> None:
    app = make_app()
    fresh_home(app, tmp_path)
    shell = app.cli("shell", "foo", "appserver", "--", "true")
    assert shell.returncode == 1
    assert "unknown host key for host appserver" in shell.stderr
    assert "bastion-tray trust foo appserver" in shell.stderr
    wrong = app.cli("trust", "foo", "appserver", "--fingerprint", "A" * 43)
    assert wrong.returncode == 1 and "nothing was recorded" in wrong.stderr
    bad = app.cli("trust", "foo", "appserver", "--fingerprint", "nonsense")
    assert bad.returncode == 2 and "not a SHA256 fingerprint" in bad.stderr
    assert "foo-appserver" not in app.known_hosts.read_text()


def test_ssh_config_json_lists_the_hosts_and_install_is_idempotent(
        make_app: type[App], tmp_path: Path) -> None:
    app = make_app()
    home = fresh_home(app, tmp_path)
    hosts = json.loads(app.cli("ssh-config", "foo", "--json", check=True).stdout)["hosts"]
    assert [h["alias"] for h in hosts] == ["foo-bastion", "foo-appserver"]
    assert all(h["known_hosts"] == str(app.known_hosts) for h in hosts)
    user_config = home / ".ssh" / "config"
    user_config.write_text("Host mine\n    HostName 127.0.0.1\n")
    user_config.chmod(0o644)
    first = app.cli("ssh-config", "--install", check=True)
    assert "backup" in first.stdout
    conf = home / ".ssh" / "bastion-tray.conf"
    assert "Host foo-appserver" in conf.read_text()
    text = user_config.read_text()
    assert text.splitlines()[1] == f"Include {conf}" and text.endswith("Host mine\n"
                                                                     "    HostName 127.0.0.1\n")
    assert (home / ".ssh" / "config.bastion-tray.bak").read_text().startswith("Host mine")
    app.cli("ssh-config", "foo", "--install", check=True)
    assert user_config.read_text() == text, "a second install adds no second Include"
    assert conf.read_text().count("Host foo-appserver") == 1
    app.cli("trust", "foo", "appserver", "--yes", check=True)
    via_include = subprocess.run(["ssh", "-F", str(user_config), "-o", "BatchMode=yes",
                                  "foo-appserver", "true"], env=app.env, capture_output=True,
                                 text=True, timeout=90)
    assert via_include.returncode == 0, via_include.stderr


def test_the_trays_open_shell_offers_trust_for_an_unknown_private_host(
        make_app: type[App], tmp_path: Path) -> None:
    """The tray's "Open shell" runs this very command in a terminal: an unknown app-server key
    is shown there with its fingerprint and trusted on "y", then the session opens."""
    from bastion_tray.ui.desktop import shell_command
    from tests.support.terminal import run_on_a_terminal

    app = make_app()
    fresh_home(app, tmp_path)
    argv = shell_command(app.config, "foo", "appserver")
    code, output = run_on_a_terminal(argv, app.env, [
        (b"[y/N]", "y"), (b"#", "echo answer=$((6*7)); exit 0")], timeout=90)
    assert fingerprint(app.sandbox.appserver_host_key_line) in output
    assert code == 0 and "answer=42" in output, output
    assert f"foo-appserver {app.sandbox.appserver_host_key_line}" in app.known_hosts.read_text()
