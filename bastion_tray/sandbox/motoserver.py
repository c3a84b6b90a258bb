"""moto's server with one change: GetConsoleOutput answers what the sandbox wrote for the instance.

moto answers every GetConsoleOutput with the same canned kernel log. A real instance's console
holds the fingerprints of its sshd's host keys, which is what bastion-tray verifies a first
contact against, so the sandbox writes ``<console-dir>/<instance-id>.txt`` (Amazon-Linux-like
text holding its real sshd's fingerprints; sandbox/console.py) and this server hands it out.
``<instance-id>.latest.txt``, when present, answers ``Latest=true`` instead (the live output of
a later boot, which no longer prints the keys). No file: moto's own answer, as before.

Run as ``python -m bastion_tray.sandbox.motoserver --console-dir DIR [moto.server options]``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

_INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}")


def console_file(console_dir: Path, instance_id: str, *, latest: bool = False) -> Path | None:
    """Where the sandbox keeps `instance_id`'s console output (`latest`: the live one); None
    for a malformed id (it comes from a request: never a path outside `console_dir`)."""
    if not _INSTANCE_ID.fullmatch(instance_id):
        return None
    return console_dir / f"{instance_id}{'.latest' if latest else ''}.txt"


def _read(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        with path.open(encoding="utf-8", newline="") as handle:  # CRLFs as written
            return handle.read()
    except FileNotFoundError:
        return None


def patch_console_output(console_dir: Path) -> None:
    """Make moto's EC2 GetConsoleOutput read `console_dir` first."""
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow
    from moto.ec2.responses.general import General
    from moto.ec2.utils import Base64EncodedString

    moto_answer = General.get_console_output

    def get_console_output(self: Any) -> Any:
        instance_id = str(self._get_param("InstanceId"))
        text = None
        if self._get_bool_param("Latest", False):
            text = _read(console_file(console_dir, instance_id, latest=True))
        if text is None:
            text = _read(console_file(console_dir, instance_id))
        if text is None:
            return moto_answer(self)
        instance = self.ec2_backend.get_instance(instance_id)  # InvalidInstanceID.NotFound
        return ActionResult({"InstanceId": instance.id, "Timestamp": utcnow(),
                             "Output": Base64EncodedString.from_raw_string(text)})

    General.get_console_output = get_console_output  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--console-dir", type=Path, required=True)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    args.console_dir.mkdir(parents=True, exist_ok=True)
    patch_console_output(args.console_dir)
    from moto.server import main as moto_main

    moto_main(rest)


if __name__ == "__main__":
    main()
