"""An encrypted identity file: the CLI asks on a terminal, the daemon keeps it in memory only."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion_tray.sandbox import Sandbox
from tests.support.app import App
from tests.support.terminal import run_on_a_terminal

pytestmark = pytest.mark.timeout(120)
SECRET = "correct horse battery staple"


@pytest.fixture
def app(fresh_sandbox: Sandbox, tmp_path: Path) -> Iterator[App]:
    key = tmp_path / "encrypted_ed25519"
    shutil.copy(fresh_sandbox.client_key, key)
    key.chmod(0o600)
    # the same key (so the sandbox sshd accepts it), now encrypted with a passphrase
    subprocess.run(["ssh-keygen", "-q", "-p", "-f", str(key), "-P", "", "-N", SECRET],
                   check=True, capture_output=True)
    application = App(fresh_sandbox, extra_bastion={"identity_file": str(key)})
    yield application
    application.close()


def test_without_a_terminal_the_error_says_what_to_do(app: App) -> None:
    proc = app.cli("up", "foo")
    assert proc.returncode == 1
    assert "encrypted identity_file" in proc.stderr and "ssh-add" in proc.stderr


def test_the_cli_asks_and_the_daemon_connects(app: App) -> None:
    code, output = run_on_a_terminal(
        [sys.executable, "-m", "bastion_tray", "up", "foo"], app.env,
        [(b"_ed25519:", "wrong one"), (b"_ed25519:", SECRET)])
    assert code == 0, output + app.log()
    assert "wrong passphrase, try again" in output
    assert app.status()["bastion"]["ssh"] == "connected"
    # the ssh master signed in with the decrypted key, lent from memory by the private agent
    assert app.status()["bastion"]["data_plane"] == "openssh", app.log()
    assert SECRET not in app.log()
    assert not any(SECRET in p.read_text(errors="replace")
                   for p in app.home.rglob("*") if p.is_file())
