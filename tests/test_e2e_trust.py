"""The daemon's `trust`: it records the bastion's host key only if it is the one confirmed.

The CLI compares the fingerprint itself first, in the same words, so a test through the CLI
never reaches the daemon's own guard (tests/test_e2e_engine.py's
test_trust_records_only_the_confirmed_key). Here the request goes over the control socket, as
any client can send it (the tray, a script, a CLI of another version), to the real daemon, which
fetches the key from the sandbox's real sshd.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bastion_tray.core.errors import HostKeyError
from bastion_tray.core.paths import app_paths
from bastion_tray.sandbox import Sandbox
from bastion_tray.service.control_client import ControlClient
from tests.support.app import App

pytestmark = pytest.mark.timeout(120)

WRONG = "SHA256:" + "A" * 43  # well-formed, and not the sandbox bastion's key


@pytest.fixture
def app(bastion: Sandbox) -> Iterator[App]:
    app = App(bastion, trusted=False)
    # a known_hosts that holds something already: "records nothing" is then byte for byte
    app.known_hosts.parent.mkdir(parents=True, exist_ok=True)
    app.known_hosts.write_text(bastion.appserver_known_hosts_line + "\n")
    app.known_hosts.chmod(0o600)
    app.cli("status", check=True)  # starts the daemon
    yield app
    app.close()


@pytest.fixture
def client(app: App) -> Iterator[ControlClient]:
    with ControlClient.connect(app_paths({"BASTION_TRAY_HOME": str(app.home)})) as client:
        yield client


def test_daemon_refuses_to_trust_a_key_other_than_the_confirmed_one(
        app: App, client: ControlClient) -> None:
    before = app.known_hosts.read_bytes()
    presented = app.sandbox.bastion_host_key_fingerprint
    with pytest.raises(HostKeyError) as caught:
        client.request("trust", profile="foo", fingerprint=WRONG, timeout=60)
    message = caught.value.message
    assert WRONG in message and presented in message, message
    assert "nothing was recorded" in message
    assert app.known_hosts.read_bytes() == before
    assert app.sandbox.bastion_host_key_line.split()[1] not in app.known_hosts.read_text()


def test_daemon_records_the_key_when_the_confirmed_fingerprint_matches(
        app: App, client: ControlClient) -> None:
    """The other half: the refusal above is the fingerprint check's, not a trust that fails
    anyway (the request, the profile and the bastion are the same)."""
    before = app.known_hosts.read_text()
    presented = app.sandbox.bastion_host_key_fingerprint
    reply = client.request("trust", profile="foo", fingerprint=presented, timeout=60)
    assert reply["fingerprint"] == presented
    after = app.known_hosts.read_text()
    assert after.startswith(before)  # what was there stays
    assert app.sandbox.bastion_host_key_line.split()[1] in after
