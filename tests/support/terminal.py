"""Run a command with a pseudo-terminal as its controlling tty and answer what it prints."""

from __future__ import annotations

import fcntl
import os
import select
import subprocess
import termios
import time


def run_on_a_terminal(argv: list[str], env: dict[str, str],
                      script: list[tuple[bytes, str]], timeout: float = 60) -> tuple[int, str]:
    """`script`: (text the output must end with, line to type then), in order."""
    master, slave = os.openpty()

    def make_controlling_tty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave,
                            preexec_fn=make_controlling_tty)
    os.close(slave)
    output, pending, answered_at = b"", list(script), 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            # only what came after the last answer may trigger the next one
            if pending and output[answered_at:].rstrip().endswith(pending[0][0]):
                os.write(master, pending.pop(0)[1].encode() + b"\n")
                answered_at = len(output)
        elif proc.poll() is not None:
            break
    os.close(master)
    if proc.poll() is None:
        proc.kill()
    return proc.wait(timeout=10), output.decode(errors="replace")
