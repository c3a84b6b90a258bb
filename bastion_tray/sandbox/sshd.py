"""A real OpenSSH sshd on one loopback address, with its own config, host key and pidfile.

Runs as whoever runs the sandbox. As root it needs UsePAM yes (root's password field is a
locked "*", which sshd without PAM treats as a locked account and refuses even for keys) and
the privilege-separation directory /run/sshd. As another user PAM cannot work, and sshd skips
privilege separation by itself.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from bastion_tray.sandbox.errors import SandboxError
from bastion_tray.sandbox.net import ssh_banner
from bastion_tray.sandbox.procs import ProcessSet, wait_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SshdSpec:
    name: str  # "bastion" or "appserver": names the config, log and pid files
    host: str  # a 127.x.y.z address to listen on
    port: int
    user: str  # the only user allowed in
    host_key: Path
    authorized_keys: Path
    stub_dir: Path  # put first on every session's PATH
    session_wrapper: Path  # ForceCommand: re-prepends the stubs after profile files ran
    sftp_server: str  # external, so scp/sftp go through the wrapper like everything else
    state_dir: Path  # where the config, pidfile and log go
    # EC2 Instance Connect (instance_connect.py): the AuthorizedKeysCommand script and this
    # instance's directory of pushed keys; None: authorized_keys only
    keys_command: Path | None = None
    pushed_keys: Path | None = None


def _q(value: object) -> str:
    """Quote a config argument: sshd splits on spaces, and workdirs may have them."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(spec: SshdSpec, *, as_root: bool) -> str:
    path = f"{spec.stub_dir}:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
    lines = [
        f"Port {spec.port}",
        f"ListenAddress {spec.host}",
        f"HostKey {_q(spec.host_key)}",
        f"PidFile {_q(spec.state_dir / f'sshd-{spec.name}.pid')}",
        f"AuthorizedKeysFile {_q(spec.authorized_keys)}",
        *_keys_command(spec),
        f"AllowUsers {spec.user}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        f"UsePAM {'yes' if as_root else 'no'}",
        "StrictModes no",
        "AllowTcpForwarding yes",
        "AllowAgentForwarding no",
        "X11Forwarding no",
        "PermitUserEnvironment no",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        # parallel tests and reconnect loops open many connections at once
        "MaxStartups 100:30:200",
        "MaxSessions 50",
        "LogLevel VERBOSE",
        f"SetEnv {_q('PATH=' + path)}",
        f"ForceCommand {_q(spec.session_wrapper)}",
        f"Subsystem sftp {_q(spec.sftp_server)}",
    ]
    return "\n".join(lines) + "\n"


def _keys_command(spec: SshdSpec) -> list[str]:
    """The pushed keys, besides authorized_keys. /bin/sh runs the script: as root, sshd runs
    only a command that root owns in directories nobody else may write (the script is its
    argument, not checked); it runs as the sandbox's user, who can read the keys."""
    if spec.keys_command is None or spec.pushed_keys is None:
        return []
    return [f"AuthorizedKeysCommand /bin/sh {_q(spec.keys_command)} {_q(spec.pushed_keys)} %u",
            f"AuthorizedKeysCommandUser {spec.user}"]


class Sshd:
    """One sshd listener that can be started, killed (with every session) and started again."""

    def __init__(self, spec: SshdSpec, binary: str, procs: ProcessSet) -> None:
        self.spec = spec
        self._binary = binary
        self._procs = procs
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0
        self.config_path = spec.state_dir / f"sshd-{spec.name}.conf"
        self.log_path = spec.state_dir / f"sshd-{spec.name}.log"
        self.config_path.write_text(render_config(spec, as_root=self._as_root))
        if self._as_root:
            # privilege separation chroots into it; Debian creates it only from the service unit
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self._check_config()

    def _check_config(self) -> None:
        result = subprocess.run([self._binary, "-t", "-f", str(self.config_path)],
                                capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise SandboxError(f"sshd ({self.spec.name}) rejects {self.config_path}: "
                               f"{result.stderr.strip()}")

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def is_running(self) -> bool:
        return self.pid is not None

    def answers(self) -> bool:
        return ssh_banner(self.spec.host, self.spec.port, timeout=1.0) is not None

    def start(self) -> None:
        """Start unless running. Returns at once: callers that need it up wait for the banner."""
        with self._lock:
            if self.is_running():
                return
            argv = [self._binary, "-D", "-e", "-f", str(self.config_path)]
            self._proc = self._procs.spawn(f"sshd-{self.spec.name}", argv,
                                           log_file=self.log_path, tree_kill=True)
            log.info("[sandbox sshd=%s] listening on %s:%d pid=%d", self.spec.name,
                     self.spec.host, self.spec.port, self._proc.pid)

    def stop(self) -> None:
        """Kill the listener and every session it spawned, like a machine that powers off."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None:
                self._procs.stop(proc)
                log.info("[sandbox sshd=%s] stopped", self.spec.name)

    def restart(self, timeout: float = 10.0) -> None:
        with self._lock:
            self.stop()
            self.start()
            self.wait_answering(timeout)

    def wait_answering(self, timeout: float = 10.0) -> None:
        if not wait_for(self.answers, timeout=timeout):
            proc = self._proc
            exited = proc is not None and proc.poll() is not None
            raise SandboxError(
                f"sshd ({self.spec.name}) on {self.spec.host}:{self.spec.port} did not answer in "
                f"{timeout:.0f}s{' (it exited)' if exited else ''}; see {self.log_path}")
