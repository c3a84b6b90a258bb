"""What the daemon must remember across its own restarts (even a SIGKILL), per profile.

The lifecycle (core/lifecycle.py) says what that is — `Persisted`: the instance, whether this
daemon started it, when its idle period began, the forwards that were listening — and emits a
`Save` whenever it changes. Written atomically. A file of any other shape than exactly this one
is set aside as `.corrupt` with a warning, never trusted:

    {"version": 2, "profiles": {"foo": {"instance_id": "i-…", "started_by_daemon": true,
                                        "idle_since": 1764600000.0, "listening": ["db"],
                                        "lease": true}}}

("lease": a lease tag of ours may be on the instance; a file written before teams lacks it.)
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from pathlib import Path
from typing import Any

from bastion_tray.core.lifecycle import Persisted

log = logging.getLogger("bastion_tray.daemon")

VERSION = 2
MAX_BYTES = 1024 * 1024  # far more than any number of profiles needs
_KEYS = {"instance_id", "started_by_daemon", "idle_since", "listening"}
_OPTIONAL = {"lease", "ingress"}


class StateFileShapeError(ValueError):
    """The file parses but is not the shape this daemon writes."""


def _entry(name: str, raw: Any) -> Persisted:
    if not isinstance(raw, dict) or not _KEYS <= set(raw) <= _KEYS | _OPTIONAL:
        raise StateFileShapeError(f"profile {name!r}: expected exactly the keys "
                                  f"{sorted(_KEYS | _OPTIONAL)}")
    lease, ingress = raw.get("lease", False), raw.get("ingress", False)
    if not isinstance(lease, bool):
        raise StateFileShapeError(f"profile {name!r}: lease must be true or false")
    if not isinstance(ingress, bool):
        raise StateFileShapeError(f"profile {name!r}: ingress must be true or false")
    instance, started, since, listening = (raw["instance_id"], raw["started_by_daemon"],
                                           raw["idle_since"], raw["listening"])
    if instance is not None and not (isinstance(instance, str) and instance):
        raise StateFileShapeError(f"profile {name!r}: instance_id must be a string or null")
    if not isinstance(started, bool):
        raise StateFileShapeError(f"profile {name!r}: started_by_daemon must be true or false")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int | float)
                              or not math.isfinite(since) or since < 0):
        raise StateFileShapeError(f"profile {name!r}: idle_since must be a time or null")
    if not isinstance(listening, list) or not all(isinstance(f, str) for f in listening):
        raise StateFileShapeError(f"profile {name!r}: listening must be a list of names")
    return Persisted(instance, started, None if since is None else float(since),
                     tuple(sorted(set(listening))), lease, ingress)


def parse_state(text: str) -> dict[str, Persisted]:
    """The profiles' records, or ValueError saying what is wrong with the file."""
    data = json.loads(text, parse_constant=lambda c: _refuse(c))
    if not isinstance(data, dict) or set(data) != {"version", "profiles"}:
        raise StateFileShapeError('expected {"version": 2, "profiles": {…}}')
    if data["version"] != VERSION or isinstance(data["version"], bool):
        raise StateFileShapeError(f"version {data['version']!r}, expected {VERSION}")
    profiles = data["profiles"]
    if not isinstance(profiles, dict):
        raise StateFileShapeError("profiles must be an object")
    return {str(name): _entry(str(name), raw) for name, raw in profiles.items()}


def _refuse(constant: str) -> Any:
    raise StateFileShapeError(f"{constant} is not a valid value")


def _as_json(record: Persisted) -> dict[str, Any]:
    return {"instance_id": record.instance_id, "started_by_daemon": record.started_by_us,
            "idle_since": record.idle_since, "listening": list(record.listening),
            "lease": record.lease, "ingress": record.ingress}


class StateFile:
    """The daemon's state file: loaded once, saved per profile on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._records: dict[str, Persisted] = self._load()

    def _load(self) -> dict[str, Persisted]:
        try:
            with self.path.open("rb") as f:
                raw = f.read(MAX_BYTES + 1)
            if len(raw) > MAX_BYTES:
                raise StateFileShapeError(f"larger than {MAX_BYTES} bytes")
            return parse_state(raw.decode("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError too
            aside = self.path.with_suffix(".corrupt")
            log.warning("set aside the daemon state %s as %s, not trusted: %s", self.path,
                        aside.name, exc)
            try:
                self.path.replace(aside)
            except OSError as err:
                log.warning("could not set aside %s: %s", self.path, err)
        return {}

    def record(self, profile: str) -> Persisted | None:
        with self._lock:
            return self._records.get(profile)

    def save(self, profile: str, record: Persisted) -> None:
        with self._lock:
            if self._records.get(profile) == record:
                return
            self._records[profile] = record
            data = {"version": VERSION,
                    "profiles": {n: _as_json(r) for n, r in sorted(self._records.items())}}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
