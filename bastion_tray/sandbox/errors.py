"""The sandbox's own failure: something it needs did not start or misbehaved."""

from __future__ import annotations

from bastion_tray.core.errors import BastionTrayError


class SandboxError(BastionTrayError):
    """A sandbox peer (moto, sshd, MariaDB) could not be set up; the message says which."""

    kind = "sandbox"
