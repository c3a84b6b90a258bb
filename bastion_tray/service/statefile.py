"""What the daemon must remember across its own restarts (even a SIGKILL).

Per instance: whether this daemon started it (so a clean exit stops it) and when its idle
period began (so a restarted daemon resumes the idle clock instead of forgetting it).
Written atomically; a corrupt file is set aside, never trusted.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("bastion_tray.daemon")


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
            instances = data["instances"]
            if isinstance(instances, dict):
                return instances
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable daemon state %s: %s", self.path, exc)
            self.path.replace(self.path.with_suffix(".corrupt"))
        return {}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"instances": self._data}, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def _update(self, instance: str, **fields: Any) -> None:
        with self._lock:
            entry = self._data.setdefault(instance, {})
            if all(entry.get(k) == v for k, v in fields.items()):
                return
            entry.update(fields)
            self._save()

    def mark_started(self, instance: str) -> None:
        self._update(instance, started_by_daemon=True)

    def started(self, instance: str) -> bool:
        with self._lock:
            return bool(self._data.get(instance, {}).get("started_by_daemon"))

    def set_idle_since(self, instance: str, when: float | None) -> None:
        self._update(instance, idle_since=when)

    def idle_since(self, instance: str) -> float | None:
        with self._lock:
            value = self._data.get(instance, {}).get("idle_since")
            return float(value) if isinstance(value, int | float) else None

    def forget(self, instance: str) -> None:
        with self._lock:
            if self._data.pop(instance, None) is not None:
                self._save()
