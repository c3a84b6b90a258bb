"""Stand-ins for commands that must never run for real in a sandbox session.

The "bastion" is this very machine, so a daemon bug or a test that runs `sudo shutdown` on it
must hit a stub. sshd's SetEnv puts the stubs first on PATH, but login shells re-read
/etc/profile, which resets PATH; so every session also goes through a ForceCommand wrapper that
prepends the stubs again and then runs the requested command or a shell without profile files.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

STUBBED = ("shutdown", "poweroff", "reboot", "halt", "sudo")
CALLS_LOG = "calls.log"

_STUB = """#!/bin/sh
# sandbox stub: records the call instead of running {name}
printf '%s\\n' "{name} $*" >> {log}
echo "sandbox stub: {name} not run"
exit 0
"""

_WRAPPER = """#!/bin/sh
# every sandbox sshd session runs this (ForceCommand), so the stubs win even after /etc/profile
PATH={stubs}:"$PATH"
export PATH
if [ -n "${{SSH_ORIGINAL_COMMAND:-}}" ]; then
    exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
fi
exec {shell}
"""


def write_stubs(stub_dir: Path) -> None:
    stub_dir.mkdir(parents=True, exist_ok=True)
    log = shlex.quote(str(stub_dir / CALLS_LOG))
    for name in STUBBED:
        _write_executable(stub_dir / name, _STUB.format(name=name, log=log))
    (stub_dir / CALLS_LOG).touch()


def write_session_wrapper(path: Path, stub_dir: Path) -> Path:
    shell = "/bin/bash --noprofile --norc -i" if os.access("/bin/bash", os.X_OK) else "/bin/sh -i"
    _write_executable(path, _WRAPPER.format(stubs=shlex.quote(str(stub_dir)), shell=shell))
    return path


def read_calls(stub_dir: Path) -> list[str]:
    """Every stubbed call so far, as "<name> <args>", oldest first."""
    log = stub_dir / CALLS_LOG
    return log.read_text().splitlines() if log.exists() else []


def _write_executable(path: Path, text: str) -> None:
    path.write_text(text)
    os.chmod(path, 0o755)
