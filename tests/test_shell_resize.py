"""The built-in SSH client's remote pty follows the terminal's size (fdb3e77, SIGWINCH).

Against the sandbox's real OpenSSH sshd (the app server, reached through the bastion by the real
daemon), driven on a real pseudo-terminal: the pty is resized, SIGWINCH sent, and the remote
shell's own `stty size` must report the new size. Without the SIGWINCH handler the remote pty
keeps the size it was opened with, and full-screen programs (vim, less, top) draw garbage.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion_tray.sandbox import Sandbox
from tests.support.app import App

pytestmark = pytest.mark.timeout(120)

#: what the remote shell prints for `echo "size=$(stty size)"`; the echo of the typed command
#: itself shows `$(stty size)`, never digits, so only the answer matches
SIZE = re.compile(rb"size=(\d+) (\d+)\r?\n")


class Terminal:
    """A command on a pseudo-terminal of a given size, as its controlling tty."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int, cols: int) -> None:
        self.master, slave = os.openpty()
        self.resize(rows, cols)  # before the start: the size the client opens the remote pty at

        def make_controlling_tty() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     preexec_fn=make_controlling_tty)
        os.close(slave)
        self.output = b""
        self._seen = 0  # expect() looks only at what came after its last match

    def resize(self, rows: int, cols: int) -> None:
        """What a terminal window does when it is resized; the kernel sends SIGWINCH then."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def expect(self, pattern: re.Pattern[bytes], timeout: float) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            found = pattern.search(self.output, self._seen)
            if found:
                self._seen = found.end()
                return found
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"no {pattern.pattern!r} within {timeout} s; the terminal "
                                     f"showed:\n{self.output.decode(errors='replace')}")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], min(timeout, 0.2))
        if not ready:
            return self.proc.poll() is None
        try:
            chunk = os.read(self.master, 4096)
        except OSError:  # EIO: the command closed the terminal
            return False
        self.output += chunk
        return bool(chunk)

    def remote_size(self, timeout: float = 10) -> tuple[int, int]:
        self.type('echo "size=$(stty size)"')
        found = self.expect(SIZE, timeout)
        return int(found[1]), int(found[2])

    def close(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait(timeout=10)
        os.close(self.master)
        return code


@pytest.fixture
def app(bastion: Sandbox, tmp_path: Path) -> Iterator[App]:
    app = App(bastion)
    app.known_hosts.write_text(bastion.trusted_lines("foo"))  # both keys, by alias
    no_ssh = tmp_path / "bin"  # no ssh binary on PATH: `shell` uses the built-in client
    no_ssh.mkdir()
    app.env["PATH"] = str(no_ssh)
    yield app
    app.close()


def test_remote_pty_follows_the_terminal_when_it_is_resized(app: App) -> None:
    term = Terminal([sys.executable, "-m", "bastion_tray", "shell", "foo", "appserver"],
                    app.env, rows=24, cols=80)
    try:
        # the remote prompt shows only once the client pumps, its SIGWINCH handler in place;
        # typing earlier is lost: the client flushes pending input when it makes the tty raw
        term.expect(re.compile(rb"built-in SSH client.*?[#$] ", re.DOTALL), 60)
        assert term.remote_size() == (24, 80)  # the size the pty was opened at
        for rows, cols in ((50, 132), (30, 100)):
            term.resize(rows, cols)
            os.kill(term.proc.pid, signal.SIGWINCH)  # the kernel sends one too; one is enough
            seen = [term.remote_size()]
            deadline = time.monotonic() + 5  # the window-change request travels on its own
            while seen[-1] != (rows, cols) and time.monotonic() < deadline:
                time.sleep(0.2)
                seen.append(term.remote_size())
            assert seen[-1] == (rows, cols), f"remote pty sizes after the resize: {seen}"
        term.type("exit 3")
        assert term.proc.wait(timeout=20) == 3
    finally:
        code = term.close()
    assert code == 3, term.output.decode(errors="replace") + app.log()
