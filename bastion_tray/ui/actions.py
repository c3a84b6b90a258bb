"""What the tray's menu items do: each `Action` becomes a request to the daemon or a desktop
call. They run on a worker thread (`submit`), never on the UI thread; a failure becomes a
notification that says what to do, never an exception in the UI loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bastion_tray.core.errors import BastionTrayError, UsageError
from bastion_tray.core.paths import AppPaths, ensure_private_dir
from bastion_tray.core.status import ProfileStatus
from bastion_tray.core.statusline import human_duration
from bastion_tray.ui import desktop
from bastion_tray.ui.model import KEEP_DURATION, Action, IconState
from bastion_tray.ui.notices import Notice, error_text

if TYPE_CHECKING:
    from bastion_tray.core.config import Config
    from bastion_tray.service.control_client import ControlClient

log = logging.getLogger("bastion_tray.tray")

LABELS = {  # for "<profile>: <what> failed"
    "connect": "connect", "start": "start", "stop": "stop", "keep": "keep running",
    "shell": "open shell", "copy-ssh-config": "copy ssh config",
    "show-ssh-config": "show ssh config", "open-config": "open config file",
    "show-log": "show log", "quit": "quit",
}


@dataclass
class TrayHooks:
    """What the runner needs from the tray around it; the defaults suit tests."""

    notify: Callable[[Notice], None]
    before_quit: Callable[[], None] = lambda: None  # stop watching, so nobody respawns
    after_quit: Callable[[], None] = lambda: None  # stop the icon's loop
    clipboard: Callable[[str], bool] | None = None  # the tray's own (GTK) clipboard, if any


class ActionRunner:
    """Carries out menu actions against the daemon of `paths`, config file `config_path`."""

    def __init__(self, config_path: Path, paths: AppPaths, hooks: TrayHooks, *,
                 connect: Callable[[], ControlClient] | None = None) -> None:
        self.config_path, self.paths, self.hooks = config_path, paths, hooks
        self._connect = connect or self._spawn_or_connect
        self._lock = threading.Lock()
        self._running: set[Action] = set()

    # ---- entry points ----------------------------------------------------------------------

    def submit(self, action: Action) -> threading.Thread | None:
        """Run `action` on a worker thread; a second click while it runs is ignored."""
        with self._lock:
            if action in self._running:
                log.info("%s already in progress", action)
                return None
            self._running.add(action)
        worker = threading.Thread(target=self._run_and_release, args=(action,),
                                  name=f"tray-{action.op}", daemon=True)
        worker.start()
        return worker

    def run(self, action: Action) -> Notice | None:
        """Run `action` here and now; its outcome (success or failure) is notified and
        returned."""
        try:
            notice = self.perform(action)
        except BastionTrayError as exc:
            log.warning("%s failed: %s", action, exc)
            notice = Notice(self._failed_title(action), error_text(exc.message, exc.hint),
                            IconState.ERROR)
        except Exception as exc:  # a bug must not kill the tray; say so and log it
            log.exception("%s crashed", action)
            notice = Notice(self._failed_title(action), f"internal error: {exc!r}",
                            IconState.ERROR)
        if notice is not None:
            self.hooks.notify(notice)
        return notice

    def perform(self, action: Action) -> Notice | None:
        """Do it; raises BastionTrayError. Returns the notice success deserves, if any."""
        handler = getattr(self, "_op_" + action.op.replace("-", "_"), None)
        if handler is None:
            raise UsageError(f"unknown tray action {action.op!r}")
        result: Notice | None = handler(action)
        return result

    # ---- ops ---------------------------------------------------------------------------------

    def _op_connect(self, a: Action) -> Notice:
        with self._connect() as client:
            reply = client.request("connect", profile=a.profile, forward=a.target)
        return Notice(f"{a.profile}: {a.target} connected",
                      f"{a.target} is ready at {reply.get('local')}", IconState.CONNECTED)

    def _op_start(self, a: Action) -> None:
        with self._connect() as client:  # the daemon's `ready` event carries the news
            client.request("start", profile=a.profile)

    def _op_stop(self, a: Action) -> None:
        with self._connect() as client:  # the daemon's `stopped` event carries the news
            client.request("stop", profile=a.profile)

    def _op_keep(self, a: Action) -> Notice:
        with self._connect() as client:
            reply = client.request("keep", profile=a.profile, duration=KEEP_DURATION)
        stops = ProfileStatus.from_json(reply, "keep reply").stops_in_seconds
        return Notice(f"{a.profile}: kept running",
                      "no idle stop for the next hour" +
                      (f" (stops in {human_duration(stops)} if idle)" if stops else ""),
                      IconState.READY)

    def _op_shell(self, a: Action) -> None:
        config = self._config()
        command = desktop.shell_command(config.path, str(a.profile), str(a.target))
        argv = desktop.terminal_argv(command, config.settings.terminal)
        log.info("opening a shell: %s", " ".join(argv))
        desktop.spawn(argv)

    def _ssh_config_text(self, a: Action) -> str:
        from bastion_tray.service.sshconfig import ssh_config_blocks

        config = self._config()
        return ssh_config_blocks(config, config.profile(str(a.profile)))

    def _op_copy_ssh_config(self, a: Action) -> Notice:
        how = desktop.copy_text(self._ssh_config_text(a), self.hooks.clipboard)
        log.info("copied the ssh config of %s with %s", a.profile, how)
        return Notice(f"{a.profile}: ssh config copied",
                      "paste it into ~/.ssh/config; its hosts start the bastion on demand")

    def _op_show_ssh_config(self, a: Action) -> None:
        path = self.ssh_config_file(str(a.profile))
        path.write_text(self._ssh_config_text(a))
        desktop.open_path(path)

    def ssh_config_file(self, profile: str) -> Path:
        return ensure_private_dir(self.paths.state_dir) / f"ssh-config-{profile}.txt"

    def _op_open_config(self, a: Action) -> None:
        if not self.config_path.exists():
            raise desktop.DesktopError(f"the config file {self.config_path} does not exist yet",
                                       hint="create it (see the README's configuration "
                                            "reference)")
        desktop.open_path(self.config_path)

    def _op_show_log(self, a: Action) -> None:
        if not self.paths.daemon_log.exists():
            raise desktop.DesktopError(f"no daemon log yet at {self.paths.daemon_log}")
        desktop.open_path(self.paths.daemon_log)

    def _op_quit(self, a: Action) -> None:
        """Stop watching (or the tray would start a new daemon), ask the daemon to shut down
        (it stops the bastions it started), then end the tray."""
        from bastion_tray.service.control_client import ControlClient

        self.hooks.before_quit()
        try:
            with ControlClient.connect(self.paths, timeout=5.0) as client:
                reply = client.request("shutdown", timeout=10.0)
            log.info("daemon (pid %s) is shutting down", reply.get("pid"))
        except BastionTrayError as exc:  # no daemon: nothing to stop; quitting still works
            log.info("quit: no daemon to shut down (%s)", exc.message)
        finally:
            self.hooks.after_quit()

    # ---- helpers -----------------------------------------------------------------------------

    def _run_and_release(self, action: Action) -> None:
        try:
            self.run(action)
        finally:
            with self._lock:
                self._running.discard(action)

    def _config(self) -> Config:
        """Read fresh at each use, so edits apply without restarting the tray."""
        from bastion_tray.core.config import load_config

        return load_config(self.config_path)

    def _spawn_or_connect(self) -> ControlClient:
        from bastion_tray.service.clientside import connect

        return connect(self._config(), self.paths)

    @staticmethod
    def _failed_title(action: Action) -> str:
        what = LABELS.get(action.op, action.op)
        return f"{action.profile}: {what} failed" if action.profile else f"{what} failed"
