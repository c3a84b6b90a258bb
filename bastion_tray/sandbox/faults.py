"""Faults the tests inject into the sandbox's bastion: an sshd restart, a frozen peer."""

from __future__ import annotations

import contextlib
import os
import signal

from bastion_tray.sandbox.errors import SandboxError
from bastion_tray.sandbox.procs import descendants
from bastion_tray.sandbox.sshd import Sshd
from bastion_tray.sandbox.standins import StandinBastion


class BastionFaults:
    """Mixed into Sandbox, whose bastion sshd (or stand-in) is `_bastion`."""

    _bastion: Sshd | StandinBastion | None

    def instance_state(self) -> str:
        raise NotImplementedError

    def restart_bastion_sshd(self) -> None:
        """Kill sshd and its sessions and start it again at once; the instance stays running."""
        if self.instance_state() != "running" or self._bastion is None:
            raise SandboxError("restart_bastion_sshd needs the bastion instance running")
        self._bastion.restart()

    def freeze_bastion(self) -> list[int]:
        """SIGSTOP the bastion sshd and its sessions: a dead peer (laptop on another network).

        Connections stay open but nothing answers; `thaw_bastion(pids)` resumes them.
        """
        if isinstance(self._bastion, StandinBastion):
            raise SandboxError("freeze_bastion is not supported with the stand-in bastion")
        pid = self._bastion.pid if self._bastion is not None else None
        if pid is None:
            raise SandboxError("freeze_bastion needs the bastion sshd running")
        frozen = [pid, *descendants(pid)]
        for each in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGSTOP)
        return frozen

    def thaw_bastion(self, frozen: list[int]) -> None:
        if isinstance(self._bastion, StandinBastion):
            raise SandboxError("thaw_bastion is not supported with the stand-in bastion")
        for each in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGCONT)
