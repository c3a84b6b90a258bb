"""Logging, configured in this one place. Every record carries its context in brackets."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(verbosity: int = 0, logfile: Path | None = None) -> None:
    """stderr gets warnings (more with -v); the daemon's log file gets INFO and up, rotated.

    A spawned daemon's stderr is its log file already: then only the file handler writes,
    so no line appears twice.
    """
    root = logging.getLogger()
    root.handlers.clear()
    level = logging.WARNING - 10 * verbosity
    if logfile is None or sys.stderr.isatty():
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setLevel(max(level, logging.DEBUG))
        stderr.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(stderr)
    root.setLevel(min(level, logging.INFO) if logfile else max(level, logging.DEBUG))
    if logfile is not None:
        from logging.handlers import RotatingFileHandler  # the daemon's alone: ~1.5 ms

        logfile.parent.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(logfile, maxBytes=2_000_000, backupCount=3)
        handler.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    # paramiko logs every channel at INFO; its noise is ours to filter, not the user's to read
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)
