"""The Access keys of the config (DESIGN.md "Access"): ingress, ingress_group, public_ip_url,
identity — what loads, and each bad value refused naming the file, the key and what is
expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion_tray.core.config import DEFAULT_PUBLIC_IP_URL, load_config
from bastion_tray.core.errors import ConfigError

BASE = """
[settings]
{settings}

[profiles.foo]
region = "ap-northeast-1"

[profiles.foo.bastion]
instance_id = "i-0123456789abcdef0"
{bastion}

[profiles.foo.hosts.appserver]
hostname = "10.0.0.115"
{host}
"""


def load(tmp_path: Path, settings: str = "", bastion: str = "", host: str = "") -> object:
    path = tmp_path / "config.toml"
    path.write_text(BASE.format(settings=settings, bastion=bastion, host=host))
    return load_config(path)


def test_the_defaults_leave_security_groups_alone_and_use_keys(tmp_path: Path) -> None:
    config = load(tmp_path)
    b = config.profile("foo").bastion  # type: ignore[attr-defined]
    assert b.ingress == "open" and b.ingress_group is None and b.identity == "key"
    assert config.settings.public_ip_url == DEFAULT_PUBLIC_IP_URL  # type: ignore[attr-defined]
    host = config.profile("foo").host("appserver")  # type: ignore[attr-defined]
    assert host.identity == "key" and host.instance_id is None


def test_my_ip_instance_connect_and_their_companions_load(tmp_path: Path) -> None:
    config = load(tmp_path, settings='public_ip_url = "http://127.0.0.1:8080/ip"',
                  bastion='ingress = "my-ip"\ningress_group = "sg-0123456789abcdef0"\n'
                          'identity = "ec2-instance-connect"',
                  host='identity = "ec2-instance-connect"\ninstance_id = "i-0fedcba9876543210"')
    b = config.profile("foo").bastion  # type: ignore[attr-defined]
    assert (b.ingress, b.ingress_group, b.instance_connect) == (
        "my-ip", "sg-0123456789abcdef0", True)
    assert config.settings.public_ip_url == "http://127.0.0.1:8080/ip"  # type: ignore[attr-defined]
    host = config.profile("foo").host("appserver")  # type: ignore[attr-defined]
    assert host.instance_connect and host.instance_id == "i-0fedcba9876543210"
    assert host.identity_file is None
    named = load(tmp_path, bastion='ingress_group = "bastion ssh"')
    assert named.profile("foo").bastion.ingress_group == "bastion ssh"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("settings", "bastion", "host", "key", "expected"), [
    ("", 'ingress = "closed"', "", "ingress", "expected one of 'open', 'my-ip'"),
    ("", 'ingress = true', "", "ingress", "expected"),
    ("", 'ingress_group = "sg-xyz"', "", "ingress_group", "security group id"),
    ("", 'identity = "password"', "", "identity", "'key', 'ec2-instance-connect'"),
    ("", 'identity = "ec2-instance-connect"\nidentity_file = "/etc/hostname"', "",
     "identity_file", "not used with identity"),
    ("", "", 'identity = "ec2-instance-connect"', "instance_id", "instance id"),
    ("", "", 'instance_id = "web-1"', "instance_id", "EC2 instance id"),
    ('public_ip_url = "checkip.example"', "", "", "public_ip_url", "http:// or https://"),
])
def test_a_bad_access_value_names_the_file_the_key_and_what_is_expected(
        tmp_path: Path, settings: str, bastion: str, host: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, settings, bastion, host)
    text = str(caught.value)
    assert str(tmp_path / "config.toml") in text and key in text and expected in text, text
