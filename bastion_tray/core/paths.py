"""Where the app reads and writes: everything under $BASTION_TRAY_HOME when it is set.

The config path is resolved as: --config PATH, else $BASTION_TRAY_CONFIG, else
<user config dir>/bastion-tray/config.toml. With $BASTION_TRAY_HOME set, the "user dirs"
(config, state, logs, runtime) all live below it, which is how tests and the demo isolate runs.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

APP = "bastion-tray"


@dataclass(frozen=True)
class AppPaths:
    config_dir: Path  # holds config.toml
    state_dir: Path  # known_hosts, daemon state that survives restarts
    log_dir: Path  # daemon.log
    runtime_dir: Path  # the control socket and pidfile; 0700

    @property
    def default_config(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "daemon.sock"

    @property
    def pidfile(self) -> Path:
        return self.runtime_dir / "daemon.pid"

    @property
    def daemon_log(self) -> Path:
        return self.log_dir / "daemon.log"


def app_paths(env: dict[str, str] | None = None) -> AppPaths:
    env = dict(os.environ) if env is None else env
    home = env.get("BASTION_TRAY_HOME")
    if home:
        root = Path(home).expanduser()
        return AppPaths(root / "config", root / "state", root / "log", root / "run")
    import platformdirs  # a plain helper library, not an adapter: fine in the core

    dirs = platformdirs.PlatformDirs(APP, appauthor=False)
    with warnings.catch_warnings():  # no XDG_RUNTIME_DIR: its /tmp fallback is fine for us
        warnings.simplefilter("ignore")
        runtime = Path(dirs.user_runtime_dir)
    return AppPaths(Path(dirs.user_config_dir), Path(dirs.user_state_dir),
                    Path(dirs.user_log_dir), runtime)


def config_path(cli_value: str | None = None,
                env: dict[str, str] | None = None) -> tuple[Path, str]:
    """The config file to use and where that choice came from (for the log and error messages)."""
    env = dict(os.environ) if env is None else env
    if cli_value:
        return Path(cli_value).expanduser(), "--config"
    if env.get("BASTION_TRAY_CONFIG"):
        return Path(env["BASTION_TRAY_CONFIG"]).expanduser(), "$BASTION_TRAY_CONFIG"
    return app_paths(env).default_config, "default location"


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700: it may hold a socket or known hosts."""
    path.mkdir(parents=True, exist_ok=True)
    if os.name != "nt":
        os.chmod(path, 0o700)
    return path
