"""The demo's guide, typed in another terminal: the environment block it prints reaches the
demo's own daemon and its simulated AWS, and the guide's commands do what it says.

"Another terminal" is a shell with none of the demo's variables and with the AWS settings a
user has there (a profile ~/.aws lacks, an EC2 endpoint of their own, both loopback-safe);
the block is pasted into `sh` as printed, then the guide's lines run after it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bastion_tray.sandbox.demo import UNSET_AWS
from tests.test_demo import descendants, live_processes, read_until

pytestmark = pytest.mark.timeout(150)

# what a user's shell may hold: each breaks the AWS calls unless the block drops it
USERS_AWS = {"AWS_PROFILE": "no-such-profile", "AWS_ENDPOINT_URL_EC2": "http://127.0.0.1:9"}


@dataclass
class RunningDemo:
    proc: subprocess.Popen[str]
    guide: str
    block: list[str]  # the pasted lines, as printed
    exported: dict[str, str]
    shell_env: dict[str, str]  # the other terminal, before the paste

    @property
    def home(self) -> Path:
        return Path(self.exported["BASTION_TRAY_HOME"])

    def command(self, suffix: str) -> str:
        """The guide's line that ends with `suffix` (its comment left off)."""
        for line in self.guide.splitlines():
            text = line.split("    #", 1)[0].strip()
            if text.endswith(suffix):
                return text
        raise AssertionError(f"no guide line ending with {suffix!r}:\n{self.guide}")

    def in_shell(self, line: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`line` typed into a fresh shell after pasting the block."""
        script = "\n".join([*self.block, line]) + "\n"
        return subprocess.run(["sh", "-c", script], env=self.shell_env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def daemon_pid(self) -> int:
        return int((self.home / "run" / "daemon.pid").read_text().split()[0])


def parse_block(guide: str) -> list[str]:
    start = guide.index("paste these lines first")
    lines = guide[start:].split("\n\n", 2)[1].splitlines()
    return [line.strip() for line in lines]


def exports(block: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in block:
        words = shlex.split(line)
        if words[0] == "export":
            found.update(w.split("=", 1) for w in words[1:])  # type: ignore[misc]
    return found


@pytest.fixture
def demo(sandbox: object, tmp_path: Path) -> Iterator[RunningDemo]:
    """`bastion-tray demo --headless`, started from a shell that has the user's AWS_* too."""
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"} | USERS_AWS
    proc = subprocess.Popen([sys.executable, "-m", "bastion_tray", "demo", "--headless",
                             "--boot-delay", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    started: dict[int, str] = {}
    try:
        guide = read_until(proc, r"Press Ctrl-C", 60)
        block = parse_block(guide)
        home = tmp_path / "home"
        home.mkdir()
        shell_env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8",
                     **USERS_AWS}
        running = RunningDemo(proc, guide, block, exports(block), shell_env)
        started = descendants(proc.pid)
        yield running
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Everything is stopped." in out, out
    live = live_processes()
    assert {pid: cmd for pid, cmd in started.items() if live.get(pid) == cmd} == {}


def test_the_printed_environment_is_the_demo_daemons_own(demo: RunningDemo) -> None:
    assert demo.block[0] == UNSET_AWS
    assert all(line.startswith("export ") for line in demo.block[1:]), demo.block
    pid = demo.daemon_pid()
    assert pid in descendants(demo.proc.pid)  # the demo's daemon, not another one
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    daemon_env = dict(e.decode().split("=", 1) for e in environ if b"=" in e)
    wanted = {k: v for k, v in daemon_env.items() if k.startswith(("AWS_", "BASTION_TRAY_"))}
    assert demo.exported == wanted
    assert demo.exported["BASTION_TRAY_LOOPBACK_ONLY"] == "1"
    assert demo.exported["BASTION_TRAY_CONFIG"] == str(demo.home / "config.toml")
    assert re.fullmatch(r"http://127\.\d+\.\d+\.\d+:\d+", demo.exported["AWS_ENDPOINT_URL"])


def test_status_ssh_config_and_init_in_another_terminal_reach_the_demo(
        demo: RunningDemo) -> None:
    pid = demo.daemon_pid()
    status = demo.in_shell(demo.command(" status") + " --json")
    assert status.returncode == 0, status.stdout + status.stderr
    reply = json.loads(status.stdout)
    assert reply["daemon"]["pid"] == pid and set(reply["profiles"]) == {"demo"}
    assert demo.daemon_pid() == pid  # no second daemon was started for that terminal

    blocks = demo.in_shell(demo.command(" ssh-config demo"))
    assert blocks.returncode == 0, blocks.stderr
    assert "Host demo-bastion" in blocks.stdout and "Host demo-appserver" in blocks.stdout
    assert f"UserKnownHostsFile {demo.home / 'state' / 'known_hosts'}" in blocks.stdout

    # discovery against the demo's AWS: without the block, AWS_PROFILE or the EC2 endpoint of
    # that terminal would fail it
    bastion = re.search(r"bastion instance (i-[0-9a-f]+) is stopped", demo.guide)
    assert bastion, demo.guide
    init = demo.in_shell(demo.command(" init --dry-run --yes"))
    assert init.returncode == 0, init.stdout + init.stderr
    assert f'instance_id = "{bastion.group(1)}"' in init.stdout
    assert "(--dry-run: nothing was written)" in init.stdout
    assert "[profiles.demo]" not in init.stdout  # a profile of its own: foo, from foo-bastion
    pasted_without_unset = RunningDemo(demo.proc, demo.guide, demo.block[1:], demo.exported,
                                       demo.shell_env)
    without = pasted_without_unset.in_shell(demo.command(" init --dry-run --yes"))
    assert without.returncode != 0  # that terminal's own AWS_*: the unset line matters
    assert bastion.group(1) not in without.stdout, without.stdout + without.stderr


def test_the_guides_ssh_lines_reach_the_app_server_and_the_bastion_by_alias(
        demo: RunningDemo) -> None:
    known_hosts = (demo.home / "state" / "known_hosts").read_text().splitlines()
    by_name = {line.split()[0]: line.split(None, 1)[1] for line in known_hosts}
    # as `trust` records them: by alias (no [addr]:port); the address lines stay for older ssh
    # configs and daemons that look a host up by its address
    assert {"demo-bastion", "demo-appserver"} <= set(by_name)
    assert any(name.startswith("[127.") for name in by_name)
    for alias in ("demo-appserver", "demo-bastion"):
        ssh = demo.in_shell(demo.command(f"{alias} hostname"), timeout=90)
        # the sandbox's hosts are this machine: "hostname" answers its name, through the bastion
        assert ssh.returncode == 0, f"{alias}: {ssh.stdout}{ssh.stderr}"
        assert ssh.stdout.strip() == socket.gethostname()
