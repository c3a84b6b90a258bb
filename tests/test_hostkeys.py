"""Host-key checks against the sandbox bastion (a real OpenSSH sshd): no TOFU, no silent swap."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import paramiko
import pytest

from bastion_tray.adapters.hostkeys import (
    HostKeyStore,
    _host_matches,
    fetch_host_key,
    fingerprint,
    known_hosts_name,
)
from bastion_tray.adapters.ssh import BastionConnection
from bastion_tray.core.config import BastionConfig
from bastion_tray.core.errors import HostKeyError
from bastion_tray.core.trust import KeyTarget, bastion_target, private_target
from bastion_tray.sandbox import Sandbox

pytestmark = pytest.mark.timeout(60)


def keygen(path: Path, kind: str = "ed25519") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True,
                   capture_output=True)
    return path


def ssh_keygen_fingerprint(public_line: str, tmp_path: Path) -> str:
    pub = tmp_path / "fp.pub"
    pub.write_text(public_line + "\n")
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True,
                         text=True).stdout
    return out.split()[1]


def bastion_config(sb: Sandbox, **changes: object) -> BastionConfig:
    fields: dict[str, object] = {"instance_id": sb.bastion_instance_id, "name": None,
                                 "user": sb.user, "identity_file": sb.client_key,
                                 "port": sb.bastion_port}
    fields.update(changes)
    return BastionConfig(**fields)  # type: ignore[arg-type]


def connect(sb: Sandbox, store: HostKeyStore) -> BastionConnection:
    return BastionConnection.open(sb.eip, sb.bastion_port, bastion_config(sb), hostkeys=store,
                                  profile="foo", timeout=10)


def target(sb: Sandbox) -> KeyTarget:
    return bastion_target("foo", sb.eip, sb.bastion_port)


def empty_store(tmp_path: Path, pin: str | None = None) -> HostKeyStore:
    return HostKeyStore(tmp_path / "state" / "known_hosts", pin=pin,
                        user_known_hosts=tmp_path / "user_known_hosts")


# --- pure ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_fingerprint_is_what_ssh_keygen_prints(tmp_path: Path, kind: str) -> None:
    key = keygen(tmp_path / f"id_{kind}", kind)
    pub = key.with_name(key.name + ".pub")
    expected = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                              check=True).stdout.split()[1]
    assert fingerprint(paramiko.PKey.from_path(key)) == expected


def test_known_hosts_names_follow_openssh() -> None:
    assert known_hosts_name("127.1.2.3", 22) == "127.1.2.3"
    assert known_hosts_name("127.1.2.3", 2222) == "[127.1.2.3]:2222"


def test_bracketed_port_entry_is_not_read_as_a_glob_character_class() -> None:
    # regression: fnmatch read "[127.1.2.3]:2222" as a character class and matched nothing
    assert _host_matches("[127.1.2.3]:2222", "[127.1.2.3]:2222")
    assert not _host_matches("[127.1.2.3]:2222", "1:2222")
    assert _host_matches("127.1.2.*,!127.1.2.9", "127.1.2.3")
    assert not _host_matches("127.1.2.*,!127.1.2.9", "127.1.2.9")


def test_known_key_types_are_asked_for_first(tmp_path: Path) -> None:
    key = paramiko.PKey.from_path(keygen(tmp_path / "ec", "ecdsa"))
    user = tmp_path / "user_known_hosts"
    user.write_text(f"[127.0.0.9]:2200 {key.get_name()} {key.get_base64()}\n")
    store = HostKeyStore(tmp_path / "app", user_known_hosts=user)
    default = paramiko.Transport._preferred_keys
    ordered = store.preferred_key_types(bastion_target("foo", "127.0.0.9", 2200), default)
    assert ordered[0] == "ecdsa-sha2-nistp256" and sorted(ordered) == sorted(default)
    assert store.preferred_key_types(bastion_target("foo", "127.0.0.8", 2200),
                                     default) == default
    user.write_text(f"foo-bastion {key.get_name()} {key.get_base64()}\n")  # by alias too
    ordered = store.preferred_key_types(bastion_target("foo", "127.0.0.8", 2200), default)
    assert ordered[0] == "ecdsa-sha2-nistp256"


# --- against the sandbox bastion ----------------------------------------------------------

def test_unknown_host_key_is_refused_with_its_fingerprint_and_the_trust_command(
        bastion: Sandbox, tmp_path: Path) -> None:
    with pytest.raises(HostKeyError) as caught:
        connect(bastion, empty_store(tmp_path))
    expected = ssh_keygen_fingerprint(bastion.bastion_host_key_line, tmp_path)
    err = caught.value
    assert err.fingerprint == expected
    assert err.message == (f"unknown host key for bastion foo-bastion at {bastion.eip}:"
                           f"{bastion.bastion_port} (profile foo): {expected}")
    assert err.hint == "verify it, then run: bastion-tray trust foo"
    assert not (tmp_path / "state").exists(), "an unknown key must never be written anywhere"


def test_trusted_via_the_app_known_hosts_connects(bastion: Sandbox, tmp_path: Path) -> None:
    store = empty_store(tmp_path)
    key = fetch_host_key(bastion.eip, bastion.bastion_port, 5)
    assert fingerprint(key) == bastion.bastion_host_key_fingerprint
    path = store.record(target(bastion), key)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    # under the alias, as OpenSSH's HostKeyAlias looks it up: no address, no port
    assert path.read_text() == f"foo-bastion {bastion.bastion_host_key_line}\n"
    store.record(target(bastion), key)  # already there: no duplicate line
    assert len(path.read_text().splitlines()) == 1
    with connect(bastion, store) as conn:
        assert conn.alive and conn.host_key == bastion.bastion_host_key_fingerprint


def test_trusted_via_a_pin_connects(bastion: Sandbox, tmp_path: Path) -> None:
    with connect(bastion, empty_store(tmp_path, pin=bastion.bastion_host_key_fingerprint)) as conn:
        assert conn.alive


def test_a_pin_that_differs_is_a_changed_key(bastion: Sandbox, tmp_path: Path) -> None:
    other = paramiko.PKey.from_path(keygen(tmp_path / "other"))
    with pytest.raises(HostKeyError) as caught:
        connect(bastion, empty_store(tmp_path, pin=fingerprint(other)))
    assert "HOST KEY CHANGED" in caught.value.message
    assert fingerprint(other) in caught.value.message
    assert bastion.bastion_host_key_fingerprint in caught.value.message
    assert "host_key" in (caught.value.hint or "")


@pytest.mark.parametrize("where", ["app", "user"])
def test_changed_key_is_refused_loudly_and_the_file_is_left_byte_for_byte(
        bastion: Sandbox, tmp_path: Path, where: str) -> None:
    old = paramiko.PKey.from_path(keygen(tmp_path / "old_host_key"))
    store = empty_store(tmp_path)
    path = store.app_known_hosts if where == "app" else store.user_known_hosts
    path.parent.mkdir(parents=True, exist_ok=True)
    name = known_hosts_name(bastion.eip, bastion.bastion_port)
    path.write_bytes(f"# mine\n{name} ssh-ed25519 {old.get_base64()} old-bastion\n".encode())
    before = path.read_bytes()

    with pytest.raises(HostKeyError) as caught:
        connect(bastion, store)
    err = caught.value
    assert err.message.startswith(f"HOST KEY CHANGED for bastion foo-bastion at {bastion.eip}:"
                                  f"{bastion.bastion_port} (profile foo)!")
    assert fingerprint(old) in err.message and f"{path}:2" in err.message
    assert err.fingerprint == bastion.bastion_host_key_fingerprint
    assert err.fingerprint in err.message
    assert "attack" in err.message and "rebuilt" in err.message
    assert f"remove line 2 from {path}" in (err.hint or "")
    assert "bastion-tray trust foo" in (err.hint or "")
    assert f"ssh-keygen -R '{name}'" in (err.hint or "")
    assert path.read_bytes() == before


def test_hashed_entry_in_the_user_known_hosts_is_honoured(bastion: Sandbox,
                                                          tmp_path: Path) -> None:
    user = tmp_path / "user_known_hosts"
    name = known_hosts_name(bastion.eip, bastion.bastion_port)
    user.write_text(f"{name} {bastion.bastion_host_key_line}\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(user)], check=True, capture_output=True)
    assert user.read_text().startswith("|1|") and bastion.eip not in user.read_text()
    store = HostKeyStore(tmp_path / "app_known_hosts", user_known_hosts=user)
    with connect(bastion, store) as conn:
        assert conn.alive
    assert not store.app_known_hosts.exists()


def test_key_known_for_another_address_is_unknown_here(bastion: Sandbox, tmp_path: Path) -> None:
    # ~/.ssh/known_hosts is read as OpenSSH reads it: a key belongs to its host:port entry
    user = tmp_path / "user_known_hosts"
    user.write_text(f"[{bastion.eip}]:{bastion.bastion_port + 1} "
                    f"{bastion.bastion_host_key_line}\n")
    with pytest.raises(HostKeyError, match="unknown host key"):
        connect(bastion, HostKeyStore(tmp_path / "app", user_known_hosts=user))


def test_revoked_key_is_refused(bastion: Sandbox, tmp_path: Path) -> None:
    user = tmp_path / "user_known_hosts"
    name = known_hosts_name(bastion.eip, bastion.bastion_port)
    user.write_text(f"@revoked {name} {bastion.bastion_host_key_line}\n"
                    f"{name} {bastion.bastion_host_key_line}\n")
    with pytest.raises(HostKeyError, match="REVOKED"):
        connect(bastion, HostKeyStore(tmp_path / "app", user_known_hosts=user))


# --- aliases ------------------------------------------------------------------------------

def test_a_line_under_the_alias_decides_and_address_lines_are_then_ignored(
        bastion: Sandbox, tmp_path: Path) -> None:
    old = paramiko.PKey.from_path(keygen(tmp_path / "old_host_key"))
    store = empty_store(tmp_path)
    name = known_hosts_name(bastion.eip, bastion.bastion_port)
    # an address that AWS handed to someone else, as an older version recorded it
    store.user_known_hosts.write_text(f"{name} ssh-ed25519 {old.get_base64()}\n")
    with pytest.raises(HostKeyError, match="CHANGED"):
        connect(bastion, store)
    store.app_known_hosts.parent.mkdir(parents=True)
    store.app_known_hosts.write_text(f"foo-bastion {bastion.bastion_host_key_line}\n")
    with connect(bastion, store) as conn:  # the alias's line vouches, the address's is moot
        assert conn.alive


def test_a_key_trusted_under_one_profile_is_unknown_under_another(
        bastion: Sandbox, tmp_path: Path) -> None:
    store = empty_store(tmp_path)
    store.app_known_hosts.parent.mkdir(parents=True)
    store.app_known_hosts.write_text(f"bar-bastion {bastion.bastion_host_key_line}\n")
    with pytest.raises(HostKeyError, match="unknown host key for bastion foo-bastion"):
        connect(bastion, store)


def test_a_changed_key_under_the_alias_cannot_be_recorded_over(
        bastion: Sandbox, tmp_path: Path) -> None:
    old = paramiko.PKey.from_path(keygen(tmp_path / "old_host_key"))
    store = empty_store(tmp_path)
    store.app_known_hosts.parent.mkdir(parents=True)
    store.app_known_hosts.write_text(f"foo-bastion ssh-ed25519 {old.get_base64()}\n")
    before = store.app_known_hosts.read_bytes()
    new = fetch_host_key(bastion.eip, bastion.bastion_port, 5)
    with pytest.raises(HostKeyError) as caught:
        store.record(target(bastion), new)
    assert fingerprint(old) in caught.value.message and fingerprint(new) in caught.value.message
    assert "ssh-keygen -R 'foo-bastion'" in (caught.value.hint or "")
    assert store.app_known_hosts.read_bytes() == before


def test_a_private_host_is_never_trusted_by_its_address(tmp_path: Path) -> None:
    key = paramiko.PKey.from_path(keygen(tmp_path / "app_host_key"))
    user = tmp_path / "user_known_hosts"
    user.write_text(f"10.0.0.115 {key.get_name()} {key.get_base64()}\n")  # another VPC's
    store = HostKeyStore(tmp_path / "app", user_known_hosts=user)
    app = private_target("foo", "appserver", "10.0.0.115", 22)
    assert store.check(app, key).status == "unknown"
    store.record(app, key)
    assert (tmp_path / "app").read_text() == f"foo-appserver {key.get_name()} " \
                                             f"{key.get_base64()}\n"
    assert store.check(app, key).trusted
    other = private_target("bar", "appserver", "10.0.0.115", 22)
    assert store.check(other, key).status == "unknown"
