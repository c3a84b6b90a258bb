"""`shell` where no `ssh` binary exists: paramiko over the daemon's proxy pipe."""

from __future__ import annotations

import sys

from bastion_tray.cli import session
from bastion_tray.core.config import Config, HostConfig
from bastion_tray.core.paths import app_paths


def run_fallback_shell(config: Config, profile: str, host: HostConfig,
                       command: list[str], agent: str | None = None) -> int:
    """`agent`: the daemon's private agent socket with the key pushed to the host
    (ec2-instance-connect); it stands in for the user's ssh-agent here."""
    import os

    from bastion_tray.adapters.interactive import open_session, run_session

    print("bastion-tray: no ssh binary found; using the built-in SSH client", file=sys.stderr)
    if agent is not None:
        os.environ["SSH_AUTH_SOCK"] = agent  # paramiko's Agent reads it; this process ends soon
    client = session.connect(config)
    pipe, leftover = client.open_pipe("proxy", profile=profile, host=host.hostname,
                                      port=host.port)
    if leftover:  # the host speaks first (its banner): nothing may be lost
        pipe = _Prepended(pipe, leftover)  # type: ignore[assignment]
    transport = open_session(pipe, host, app_paths().known_hosts, profile)
    try:
        return run_session(transport, command)
    finally:
        transport.close()


class _Prepended:
    """A socket whose first recv() returns bytes already read from it."""

    def __init__(self, sock: object, first: bytes) -> None:
        self._sock = sock
        self._first = first

    def recv(self, size: int) -> bytes:
        if self._first:
            data, self._first = self._first[:size], self._first[size:]
            return data
        return self._sock.recv(size)  # type: ignore[attr-defined, no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)
