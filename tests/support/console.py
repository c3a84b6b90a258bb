"""Tests of the unknown-host-key path: the sandbox's console output then lists no host keys.

By default the sandbox's instances have console output holding their sshd's real fingerprints,
so a first contact is verified from it (tests/test_e2e_console_trust.py). A test of what happens
without that (the `trust` flow) takes it away for its duration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from bastion_tray.sandbox import Sandbox


@contextlib.contextmanager
def no_console_output(sandbox: Sandbox) -> Iterator[Sandbox]:
    """moto's canned console output (no SSH host key block) for the bastion and the app server,
    restored afterwards (the sandbox is shared by the session)."""
    for instance_id in (sandbox.bastion_instance_id, sandbox.appserver_instance_id):
        sandbox.set_console_output(instance_id, None)
        sandbox.set_console_output(instance_id, None, latest=True)
    try:
        yield sandbox
    finally:
        sandbox.restore_console_output()
