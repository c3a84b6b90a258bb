"""Shared test setup: loopback-only networking for the whole session, and the sandbox VPC.

The guard is installed at import, before any test or fixture runs: from then on a
socket.connect to a non-loopback address anywhere in this process raises LoopbackViolation,
and subprocesses inherit BASTION_TRAY_LOOPBACK_ONLY=1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bastion_tray.core.netguard import ENV as LOOPBACK_ENV
from bastion_tray.core.netguard import install_audit_guard

os.environ[LOOPBACK_ENV] = "1"
install_audit_guard()

from bastion_tray.sandbox import Sandbox, missing_prerequisites  # noqa: E402
from tests.support.app import App  # noqa: E402


def _require_sandbox_prerequisites() -> None:
    missing = missing_prerequisites()
    if not missing:
        return
    message = "the sandbox needs: apt-get install " + " ".join(missing)
    if os.environ.get("CI") == "true":
        pytest.fail(message)  # CI must not go green by skipping the real-peer tests
    pytest.skip(message)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One sandbox VPC for the session; tests that start the bastion use `fresh_sandbox`."""
    _require_sandbox_prerequisites()
    with Sandbox.start(tmp_path_factory.mktemp("sandbox")) as sb:
        yield sb


@pytest.fixture
def fresh_sandbox(sandbox: Sandbox) -> Sandbox:
    """The session sandbox with its bastion instance stopped and sshd down."""
    sandbox.reset()
    return sandbox


@pytest.fixture
def bastion(sandbox: Sandbox) -> Sandbox:
    """The sandbox with its bastion instance running and sshd answering."""
    if sandbox.instance_state() != "running" or not sandbox.bastion_ssh_up():
        sandbox.ec2().start_instances(InstanceIds=[sandbox.bastion_instance_id])
        sandbox.wait_bastion_ssh(True, sandbox.boot_delay + 10)
    return sandbox


@pytest.fixture
def make_app(fresh_sandbox: Sandbox) -> Iterator[type[App]]:
    """Isolated installations of the app on the fresh sandbox, each closed after the test."""
    apps: list[App] = []

    class Tracked(App):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(fresh_sandbox, *args, **kwargs)  # type: ignore[arg-type]
            apps.append(self)

    yield Tracked
    for app in apps:
        app.close()
