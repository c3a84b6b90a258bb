"""`bastion-tray logs [-f] [-n N]`: the end of the daemon's log, and with -f what follows.

It only reads the file (app_paths().daemon_log): no daemon is asked, none is started. -f polls
the file and reopens it when it was replaced (the log rotates) or truncated; Ctrl-C ends it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TextIO

DEFAULT_LINES = 50
POLL = 0.2  # seconds between looks at the file while following
BLOCK = 65536


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "logs", help="print the end of the daemon log (-f: keep following it)",
        description="Print the end of the daemon's log file; with -f, keep printing what is "
                    "written (across the log's rotation) until Ctrl-C, then exit 0. It only "
                    "reads the file and never starts a daemon. With no log yet it says where "
                    "the log will be and exits 0.")
    p.add_argument("-n", "--lines", type=line_count, default=DEFAULT_LINES, metavar="N",
                   help=f"how many lines from the end (default {DEFAULT_LINES})")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing lines as they are written, until Ctrl-C")
    p.set_defaults(run=run)


def line_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text[:40]!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from bastion_tray.core.paths import app_paths

    path = app_paths().daemon_log
    try:
        f = open(path, "rb")  # noqa: SIM115 - kept open while following
    except FileNotFoundError:
        print(f"no daemon log yet at {path} (it is written once a daemon has run)")
        return 0
    with f:
        write(sys.stdout, tail(f, args.lines))
        if not args.follow:
            return 0
        try:
            follow(path, f, sys.stdout)
        except KeyboardInterrupt:
            return 0
    return 0


def tail(f: BinaryIO, count: int) -> bytes:
    """The last `count` lines of `f` (read backwards in blocks); `f` is left at its end."""
    end = f.seek(0, os.SEEK_END)
    if count <= 0:
        return b""
    data = b""
    pos = end
    while pos > 0:
        step = min(BLOCK, pos)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
        # one newline more than lines wanted (the last line's own newline does not count)
        if data.count(b"\n", 0, len(data) - 1) >= count:
            break
    f.seek(end)
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-count:])


def follow(path: Path, f: BinaryIO, out: TextIO,
           sleep: Callable[[float], None] = time.sleep) -> None:
    """Print what is appended to `path` from `f`'s position on, forever (KeyboardInterrupt
    ends it). A file replaced (another inode) or shorter than what was read is read anew from
    its start; while the path is missing, it waits for it to come back. Closes what it opened."""
    current: BinaryIO | None = f
    try:
        while True:
            chunk = current.read() if current is not None else b""
            if chunk:
                write(out, chunk)
                continue
            sleep(POLL)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if current is not None:
                mine = os.fstat(current.fileno())
                if (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev):
                    if st.st_size < current.tell():
                        current.seek(0)  # truncated
                    continue
                write(out, current.read())  # the rest of the old file, then the new one
                if current is not f:
                    current.close()
                current = None
            try:
                current = open(path, "rb")  # noqa: SIM115 - kept open while following
            except FileNotFoundError:
                current = None
    finally:
        if current is not None and current is not f:
            current.close()


def write(out: TextIO, data: bytes) -> None:
    if data:
        out.write(data.decode("utf-8", errors="replace"))
        out.flush()
