"""`bastion-tray demo`: the whole product on the simulated VPC, no AWS account needed.

A throwaway BASTION_TRAY_HOME holds a generated profile `demo` (short idle timeout) aimed at
the sandbox: a stopped bastion that boots a few seconds after it is started, an app server and
MariaDB as "RDS". The daemon and — where there is a display — the tray run as they would for a
user (the tray as a process of its own: the sandbox never imports the UI); without a display
a live status line stands in for the tray, the same line the tray and `bastion-tray status`
show. Ctrl-C (or SIGTERM) tears everything down and leaves no process behind; so does the
tray's Quit, which shuts the user's daemon down and ends the tray: the demo follows it.

The guide it prints starts with the shell lines that point another terminal at the demo (its
home, config and simulated AWS, exactly what the demo's own daemon was started with).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from bastion_tray.core.netguard import ENV as LOOPBACK_ENV
from bastion_tray.core.netguard import install_audit_guard, is_loopback
from bastion_tray.core.status import ProfileStatus, Status
from bastion_tray.core.statusline import status_line
from bastion_tray.sandbox.demo_host import has_display, port_free, shutdown_daemon
from bastion_tray.sandbox.errors import SandboxError

PROFILE = "demo"
WARN_BEFORE = 20.0  # the demo profile's warn_before, in seconds
YOU, TEAMMATE = "you@laptop-a", "teammate@laptop-b"  # the two users of the demo's bastion
BACKSTOP = "5m"  # the demo profile's backstop: the sandbox plays EventBridge Scheduler
# DESIGN.md "Private hosts and OpenSSH clients": host keys are trusted under these aliases
BASTION_ALIAS, APPSERVER_ALIAS = f"{PROFILE}-bastion", f"{PROFILE}-appserver"
# how a shell drops every AWS_* variable, as the demo's daemon was started without the user's
UNSET_AWS = "unset $(env | grep -o '^AWS_[A-Za-z0-9_]*')"


class Demo:
    """A handle: `start()` prints what to try, `close()` takes every piece down again."""

    def __init__(self, *, boot_delay: float, idle_timeout: str, out: TextIO = sys.stdout,
                 home: Path | None = None, standins: bool | None = None) -> None:
        self.standins = standins  # None: stand-ins only where sshd/MariaDB are missing
        self.out = out
        self.boot_delay = boot_delay
        self.idle_timeout = idle_timeout
        self.home = home or Path(tempfile.mkdtemp(prefix="bt-demo-", dir="/tmp"))
        self._own_home = home is None
        self.sandbox: Any = None
        self.tray: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self.teammate_env: dict[str, str] = {}
        self.db_port = 0
        self.tray_exit_code: int | None = None  # set when the tray ended by itself (its Quit)

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def start(self, *, with_tray: bool) -> None:
        from bastion_tray.sandbox import Sandbox, missing_prerequisites

        os.environ[LOOPBACK_ENV] = "1"  # this process and every child: loopback only
        install_audit_guard()
        for key in [k for k in os.environ if k.startswith("AWS_")]:  # the user's, never ours:
            del os.environ[key]  # an AWS_PROFILE that ~/.aws lacks breaks even explicit clients
        missing = missing_prerequisites()  # Sandbox.start picks stand-ins by the same test
        standins = self.standins if self.standins is not None else bool(missing)
        self.say("Starting the simulated VPC (local AWS endpoint, "
                 + ("built-in stand-ins for the bastion, app server and database"
                    if standins else "bastion sshd, app server, MariaDB as RDS") + ")…")
        began = time.monotonic()
        self.sandbox = sb = Sandbox.start(self.home / "vpc", boot_delay=self.boot_delay,
                                          standins=self.standins)
        assert is_loopback(sb.eip), f"the demo bastion must be on loopback, not {sb.eip}"
        if sb.standins:
            self.say(f"  {sb.standin_note}.")
            if missing:
                self.say(f"  (for the real ones: apt-get install {' '.join(missing)})")
        self.say(f"  ready in {time.monotonic() - began:.1f} s; bastion instance "
                 f"{sb.bastion_instance_id} is stopped, Elastic IP {sb.eip}")
        self.db_port = 13306 if port_free(13306) else sb.db_forward_port
        config, self.env = self._installation(self.home, YOU, self.db_port)
        os.environ.update(self.env)  # so the commands printed below work from this process too
        self._start_daemon(config, self.env, lazy_forward=True)
        # a teammate's daemon on the same bastion: the team story (who keeps it up)
        from bastion_tray.sandbox.net import free_port

        mate_config, self.teammate_env = self._installation(self.home / "teammate", TEAMMATE,
                                                            free_port())
        self._start_daemon(mate_config, self.teammate_env, lazy_forward=False)
        if with_tray:
            from bastion_tray.service.clientside import tray_argv

            self.tray = subprocess.Popen(
                tray_argv(config), env=self.env,
                start_new_session=True, stdout=subprocess.DEVNULL,
                stderr=(self.home / "tray.log").open("ab"))
        self._print_guide(config)

    def _installation(self, home: Path, user: str, db_port: int) -> tuple[Path, dict[str, str]]:
        """One user's bastion-tray on the demo's bastion: config, known_hosts, environment."""
        sb = self.sandbox
        config = sb.write_config(home / "config.toml", idle_timeout=self.idle_timeout,
                                 warn_before=f"{WARN_BEFORE:g}s", db_local_port=db_port,
                                 profile=PROFILE, extra_settings={"user_id": user},
                                 extra_bastion={"backstop": BACKSTOP,
                                                "backstop_role": sb.backstop_role_arn})
        known_hosts = home / "state" / "known_hosts"
        known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        appserver_key = sb.appserver_known_hosts_line.split(" ", 1)[1]  # "ssh-ed25519 AAAA…"
        # what `trust` records (by alias), and the address lines that versions before the
        # aliases (and an ssh_config without HostKeyAlias) look up
        known_hosts.write_text(f"{BASTION_ALIAS} {sb.bastion_host_key_line}\n"
                               f"{APPSERVER_ALIAS} {appserver_key}\n"
                               f"[{sb.eip}]:{sb.bastion_port} {sb.bastion_host_key_line}\n"
                               f"{sb.appserver_known_hosts_line}\n")
        env = sb.child_env()
        env.update(BASTION_TRAY_HOME=str(home), BASTION_TRAY_CONFIG=str(config),
                   BASTION_TRAY_LOOPBACK_ONLY="1")
        return config, env

    def _start_daemon(self, config: Path, env: dict[str, str], *, lazy_forward: bool) -> None:
        from bastion_tray.core.config import load_config
        from bastion_tray.core.paths import app_paths, ensure_private_dir
        from bastion_tray.service.clientside import daemon_argv
        from bastion_tray.service.spawn import ensure_daemon

        paths = app_paths(env)
        ensure_private_dir(paths.log_dir)
        with ensure_daemon(paths, argv=daemon_argv(load_config(config)), env=env,
                           log_path=paths.daemon_log) as client:
            if lazy_forward:  # listening from the start: the first connection starts it
                client.request("connect", profile=PROFILE, forward="db", lazy=True)

    def _print_guide(self, config: Path) -> None:
        cli = self.cli_command()
        tries, note = self._standin_tries() if self.sandbox.standins else self._tries()
        tries += [f"{cli} status", f"{cli} ssh-config {PROFILE}",
                  f"{cli} init --dry-run --yes    # what init finds in the simulated AWS; "
                  "writes nothing"]
        team = "" if self.sandbox.standins else self._team_guide(cli)
        self.say(f"""
The demo profile '{PROFILE}' is in {config}; the bastion stops after {self.idle_timeout} idle.
{self.env_block()}
Then try there (the bastion starts on the first connection):

{chr(10).join(f"  {line}" for line in tries)}

{note}
{team}
{self._stop_guide()}
""")

    def _tries(self) -> tuple[list[str], str]:
        """The real peers: MySQL through the forward, OpenSSH through the bastion."""
        sb = self.sandbox
        client = "mysql" if shutil.which("mysql") else "mariadb"
        ssh_f = f"ssh -F {shlex.quote(str(self._write_ssh_config()))}"
        return [f"{client} -h 127.0.0.1 -P {self.db_port} -u {sb.db_user} -p{sb.db_password} "
                f"{sb.db_name} -e 'SELECT * FROM greetings'",
                f"MySQL Workbench: Standard (TCP/IP), 127.0.0.1:{self.db_port}, user "
                f"{sb.db_user}, password {sb.db_password}",
                f"{ssh_f} {APPSERVER_ALIAS} hostname    # through {BASTION_ALIAS}",
                f"{ssh_f} {BASTION_ALIAS} hostname"], (
            f"ssh checks each host key against {self.home / 'state' / 'known_hosts'} and "
            "accepts no other.")

    def _standin_tries(self) -> tuple[list[str], str]:
        """No mysql line (the stand-in database is a line echo) and no ssh line (the stand-in
        app server runs no commands): talk to the echo through the forward, watch the status."""
        if shutil.which("nc"):
            talk = f"nc 127.0.0.1 {self.db_port}"
            what = "the stand-in database greets, then sends back each line you type"
        else:
            talk = (f"{sys.executable} -c \"import socket; s = socket.create_connection(("
                    f"'127.0.0.1', {self.db_port})); print(s.recv(200).decode()); "
                    f"s.sendall(b'hello\\n'); print(s.recv(200).decode())\"")
            what = "reads the stand-in database's greeting, sends a line and gets it back"
        return [talk, f"    ({what}, through the forward)"], (
            "The stand-in database is not MySQL: mysql clients and Workbench cannot talk to it.")

    def _write_ssh_config(self) -> Path:
        """The profile's generated blocks, for `ssh -F`. Until every generated block names the
        app's known_hosts itself, a `Host *` block does (OpenSSH takes the first value)."""
        ssh_config = self.home / "ssh_config"
        text = self._cli_output("ssh-config", PROFILE)
        if "UserKnownHostsFile" not in text:
            text += "\n".join(["", "Host *",
                               f"    UserKnownHostsFile {self.home / 'state' / 'known_hosts'}",
                               "    StrictHostKeyChecking yes", ""])
        ssh_config.write_text(text)
        return ssh_config

    def env_block(self) -> str:
        """The lines that make a shell's bastion-tray use this demo: every variable its own
        daemon and CLI were started with that says which home, config and AWS (and none of
        the user's own AWS_*, as the demo's daemon has none)."""
        first = ("BASTION_TRAY_HOME", "BASTION_TRAY_CONFIG")
        ours = {k: self.env[k] for k in first} | {
            k: v for k, v in sorted(self.env.items()) if k.startswith("BASTION_TRAY_")}
        aws = {k: v for k, v in sorted(self.env.items()) if k.startswith("AWS_")}
        exports = ["export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in group.items())
                   for group in (ours, aws) if group]
        return ("\nIn another terminal, paste these lines first: bastion-tray there then uses "
                "this demo's\ndaemon and its simulated AWS (and none of your own AWS_* "
                "variables):\n\n" + "\n".join(f"  {line}" for line in [UNSET_AWS, *exports])
                + "\n")

    def cli_command(self) -> str:
        """How to type bastion-tray in that terminal: this installation's, whatever PATH says."""
        script = Path(sys.executable).parent / "bastion-tray"
        if not script.is_file():
            return f"{shlex.quote(sys.executable)} -m bastion_tray"
        found = shutil.which("bastion-tray")
        if found and Path(found).resolve() == script.resolve():
            return "bastion-tray"
        return shlex.quote(str(script))

    def _stop_guide(self) -> str:
        if self.tray is None:
            return "Press Ctrl-C to stop the demo; it takes everything down with it."
        return ("Quit in the tray shuts your daemon down and ends the demo: it then takes the "
                "teammate's daemon\nand the simulated VPC down too and deletes "
                f"{self.home} (so does Ctrl-C here).")

    def _team_guide(self, cli: str) -> str:
        mate = " ".join(f"{k}={shlex.quote(self.teammate_env[k])}" for k in (
            "BASTION_TRAY_HOME", "BASTION_TRAY_CONFIG"))
        return f"""
The bastion is shared: you are {YOU}, and {TEAMMATE} runs a daemon of their own on it.
Be the teammate, in a third terminal with the lines above pasted:

  env {mate} {cli} up {PROFILE}

Once your side is idle, your status says who keeps the bastion up
("{PROFILE}: in use by {TEAMMATE} · you are idle"); the last one out stops it. The backstop
(a schedule the simulated AWS runs) stops it {BACKSTOP} after the last daemon vanished.
Stop it for the teammate: env {mate} {cli} stop {PROFILE}
"""

    def _cli_output(self, *args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "bastion_tray", *args], env=self.env,
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:  # the guide must not point at a file that is not what it says
            raise SandboxError(f"bastion-tray {' '.join(args)} failed in the demo "
                               f"(exit {proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def status(self) -> ProfileStatus:
        from bastion_tray.core.paths import app_paths
        from bastion_tray.service.control_client import ControlClient

        with ControlClient.connect(app_paths(self.env)) as client:
            return Status.from_json(client.request("status")).profiles[PROFILE]

    def close(self) -> None:
        if self.tray is not None and self.tray.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.tray.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.tray.wait(5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.tray.pid, signal.SIGKILL)
        if self.teammate_env:
            shutdown_daemon(self.teammate_env)
        if self.env:
            shutdown_daemon(self.env)
        if self.sandbox is not None:
            self.sandbox.close()
        if self._own_home:
            shutil.rmtree(self.home, ignore_errors=True)


def gist(p: ProfileStatus) -> tuple[object, ...]:
    """What the status line says, minus its clocks: a change here is worth a new log line."""
    countdown = p.stops_in_seconds
    return (p.bastion.state, p.bastion.ssh, p.phase, p.starting, p.connections,
            countdown is not None, countdown is not None and countdown <= WARN_BEFORE, p.error,
            p.waiting_for_others, p.in_use_by, p.other_sessions)


def run_headless(demo: Demo, stop: threading.Event, tty: bool,
                 sleep: Callable[[float], bool]) -> None:
    """The live status line that stands in for the tray without a display."""
    last: object = None
    while not stop.is_set():
        now: object
        try:
            p = demo.status()
            line, now = status_line(PROFILE, p, warn_before=WARN_BEFORE), gist(p)
        except Exception as exc:  # the daemon restarting: say so, keep going
            line = now = f"{PROFILE}: daemon not answering ({exc})"
        if tty:
            demo.out.write("\r\033[K" + line)
            demo.out.flush()
        elif now != last:  # a log, not a ticker: changes only
            demo.say(line)
        last = now
        sleep(1.0)


def follow_tray(demo: Demo, woke: threading.Event) -> threading.Thread:
    """Wake the demo when its tray ends by itself: Quit (exit 0: it shut the daemon down) or a
    crash. A tray the demo closes itself ends after `woke` is set, and changes nothing."""
    tray = demo.tray
    assert tray is not None

    def wait() -> None:
        code = tray.wait()
        if not woke.is_set():
            demo.tray_exit_code = code
            woke.set()

    thread = threading.Thread(target=wait, name="demo-tray", daemon=True)
    thread.start()
    return thread


def main(*, boot_delay: float, idle_timeout: str, headless: bool, duration: float | None,
         standins: bool | None = None) -> int:
    stop = threading.Event()  # Ctrl-C, SIGTERM, --duration: the demo ends
    woke = threading.Event()  # that, or the tray ended by itself

    def end() -> None:
        stop.set()
        woke.set()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        end()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with_tray = not headless and has_display()
    demo = Demo(boot_delay=boot_delay, idle_timeout=idle_timeout, standins=standins)
    timer = threading.Timer(duration, end) if duration is not None else None
    try:
        demo.start(with_tray=with_tray)
        if timer is not None:
            timer.daemon = True
            timer.start()
        if with_tray:
            follow_tray(demo, woke)
            woke.wait()
            code = demo.tray_exit_code
            if code == 0:
                demo.say("\nThe tray was quit (its Quit shuts your daemon down): the demo ends "
                         "with it.")
            elif code is not None:  # a crash: the status line takes over, the demo goes on
                demo.say(f"\nThe tray exited with code {code} (see {demo.home / 'tray.log'}); "
                         "a live status line stands in for it. Ctrl-C stops the demo.")
                run_headless(demo, stop, sys.stdout.isatty(), stop.wait)
        else:
            demo.say(f"({'--headless' if headless else 'no display'}: a live status line "
                     "stands in for the tray)")
            run_headless(demo, stop, sys.stdout.isatty(), stop.wait)
    finally:
        if timer is not None:
            timer.cancel()
        demo.say("\nStopping the demo…")
        demo.close()
        demo.say("Everything is stopped.")
    return 0
