"""The sandbox VPC: fake AWS, a bastion sshd that follows its instance, private hosts. One handle.

moto plays AWS; what it lacks is played here: the boot delay (watcher.py) and EventBridge
Scheduler running the backstop schedules (schedules.py).

Everything listens on loopback addresses only; `close()` (or leaving the `with` block, or the
interpreter exiting) stops every process it started, also after a start that failed halfway.
Where OpenSSH sshd or MariaDB are missing, embedded stand-ins (standins.py) take their places.
"""

from __future__ import annotations

import atexit
import getpass
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from bastion_tray.core.errors import WaitTimeout
from bastion_tray.core.team import SCHEDULE_GROUP, SCHEDULE_PREFIX
from bastion_tray.sandbox import aws, console, keys, prereqs, standins, stubs, vpc
from bastion_tray.sandbox.configfile import ConfigTargets, Value, write_config
from bastion_tray.sandbox.errors import SandboxError
from bastion_tray.sandbox.faults import BastionFaults
from bastion_tray.sandbox.instance_connect import InstanceConnectFront, start_front
from bastion_tray.sandbox.mariadb import MariaDB
from bastion_tray.sandbox.net import can_bind, free_port, pick_loopback_address, ssh_banner
from bastion_tray.sandbox.prereqs import find_tool, missing_prerequisites, sftp_server
from bastion_tray.sandbox.procs import ProcessSet, wait_for
from bastion_tray.sandbox.schedules import ScheduleRun, ScheduleRunner, seed_backstop_role
from bastion_tray.sandbox.sshd import Sshd, SshdSpec
from bastion_tray.sandbox.standins import StandinAppServer, StandinBastion, StandinDatabase
from bastion_tray.sandbox.watcher import BastionWatcher

log = logging.getLogger(__name__)


class Sandbox(BastionFaults):
    """Hold it, use its attributes, close it. Build with `Sandbox.start(workdir)`."""

    # fake AWS
    env: dict[str, str]  # set these (after `child_env()` drops inherited AWS_*) to use it
    endpoint_url: str
    region: str
    vpc: vpc.SeededVpc  # every id: vpc, subnets, groups, instances, EIP allocation
    bastion_instance_id: str
    appserver_instance_id: str
    backstop_role_arn: str  # bastion-tray-backstop, as `init` creates it: may stop the bastion
    # real peers or stand-ins
    standins: bool  # True: the embedded stand-ins (no sshd, no MariaDB) run instead
    standin_note: str  # what is replaced and why, one line; "" with the real peers
    # the bastion
    eip: str  # its Elastic IP, a checked 127.x.y.z; sshd listens here while it runs
    bastion_host: str  # the same as eip
    bastion_port: int
    user: str  # the login user on both sshd (or stand-ins): whoever runs the sandbox
    client_key: Path  # unencrypted ed25519, 0600, authorized on both sshd (or stand-ins)
    bastion_host_key_line: str  # "ssh-ed25519 AAAA…"
    bastion_host_key_fingerprint: str  # "SHA256:…", for `host_key = …` pins
    known_hosts: Path  # both hosts' keys, for clients that want a file
    # private hosts
    appserver_host: str
    appserver_port: int
    appserver_known_hosts_line: str
    db_host: str
    db_port: int
    db_name: str  # with the stand-in database (a line echo, not MySQL) these three are ""
    db_user: str
    db_password: str
    db_forward_port: int  # a local port that was free, used by write_config's forward
    stub_dir: Path

    def __init__(self, workdir: Path, boot_delay: float, missing: list[str],
                 standins: bool) -> None:
        self.workdir = workdir.resolve()
        self.boot_delay = boot_delay
        self.standins = standins
        self.standin_note = prereqs.standin_note(missing) if standins else ""
        self._missing = missing
        self._procs = ProcessSet()
        self._db: MariaDB | None = None
        self._bastion: Sshd | StandinBastion | None = None
        self._appserver: Sshd | StandinAppServer | None = None
        self._standin_servers: list[StandinBastion | StandinDatabase] = []
        self._watcher: BastionWatcher | None = None
        self._schedule_runner: ScheduleRunner | None = None
        self._ec2: Any = None
        self.instance_connect: InstanceConnectFront | None = None
        self._closed = False

    @classmethod
    def start(cls, workdir: Path, *, boot_delay: float = 1.5, bastion_port: int | None = None,
              standins: bool | None = None) -> Sandbox:
        """`standins`: None picks the real sshd and MariaDB where installed, else the stand-ins
        (for both); True forces the stand-ins; False insists on the real peers."""
        missing = missing_prerequisites()
        if standins is False and missing:
            raise SandboxError("the sandbox needs more packages",
                               hint="apt-get install " + " ".join(missing))
        sandbox = cls(Path(workdir), boot_delay, missing,
                      bool(missing) if standins is None else standins)
        if sandbox.standins:
            log.info("[sandbox] %s", sandbox.standin_note)
        atexit.register(sandbox.close)
        try:
            sandbox._boot(bastion_port)
        except BaseException:
            sandbox.close()
            raise
        return sandbox

    def _boot(self, bastion_port: int | None) -> None:
        started = time.monotonic()
        for sub in ("keys", "sshd", "aws"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self._make_keys_and_stubs()

        self._pick_private_addresses()
        appserver = (self._start_standin_peers(bastion_port) if self.standins
                     else self._start_real_peers(bastion_port))
        appserver.wait_answering()
        self._appserver = appserver
        self._write_known_hosts()

        ec2 = aws.ec2_client(self.endpoint_url)  # the watcher's own: it runs in its own thread
        assert self._bastion is not None  # either _start_*_peers made it
        self._watcher = BastionWatcher(
            lambda: aws.instance_state(ec2, self.bastion_instance_id), self._bastion,
            boot_delay=self.boot_delay)
        self._watcher.start()
        self._start_schedule_runner()
        log.info("[sandbox] ready in %.1fs (workdir %s)", time.monotonic() - started, self.workdir)

    def _start_schedule_runner(self) -> None:
        endpoint = self.endpoint_url  # its own clients: it runs in its own thread
        self._schedule_runner = ScheduleRunner(aws.scheduler_client(endpoint),
                                               aws.ec2_client(endpoint), aws.iam_client(endpoint))
        self._schedule_runner.start()

    def _start_real_peers(self, bastion_port: int | None) -> Sshd:
        self._db = MariaDB(self.workdir, self._procs)
        # MariaDB's setup needs nothing from AWS: overlap it with moto's start and seeding
        with ThreadPoolExecutor(1, thread_name_prefix="sandbox-db") as pool:
            database_future = pool.submit(self._db.start, self.db_host, self.db_port)
            self._start_aws(bastion_port)
            appserver = self._sshd("appserver", self.appserver_host, self.appserver_port,
                                   self._appserver_key.private, self.appserver_instance_id)
            appserver.start()
            self._bastion = self._sshd("bastion", self.eip, self.bastion_port,
                                       self._bastion_key.private, self.bastion_instance_id)
            database = database_future.result()
        self.db_name, self.db_user = database.name, database.user
        self.db_password = database.password
        return appserver

    def _start_standin_peers(self, bastion_port: int | None) -> StandinAppServer:
        self._start_aws(bastion_port)
        self.db_name = self.db_user = self.db_password = ""
        database = StandinDatabase("database", self.db_host, self.db_port,
                                   reason=prereqs.standin_greeting_reason(self._missing))
        appserver = StandinAppServer("appserver", self.appserver_host, self.appserver_port,
                                     user=self.user, host_key=self._appserver_key.private,
                                     client_key_line=self._client_key_line)
        self._bastion = StandinBastion("bastion", self.eip, self.bastion_port, user=self.user,
                                       host_key=self._bastion_key.private,
                                       client_key_line=self._client_key_line)
        self._standin_servers = [database, appserver, self._bastion]
        database.start()
        appserver.start()
        return appserver

    def _pick_private_addresses(self) -> None:
        rng = random.Random()
        self.appserver_host = pick_loopback_address(rng, set())
        self.db_host = pick_loopback_address(rng, {self.appserver_host})
        self.appserver_port, self.db_port = free_port(self.appserver_host), free_port(self.db_host)
        self.db_forward_port = free_port("127.0.0.1")

    def _start_aws(self, bastion_port: int | None) -> None:
        self.endpoint_url = aws.start_moto(self._procs, self.workdir / "aws")
        self.region = aws.REGION
        self.env = aws.sandbox_aws_env(self.endpoint_url, self.workdir / "aws")
        self._ec2 = aws.ec2_client(self.endpoint_url)
        self.instance_connect = start_front(self.endpoint_url, self.workdir / "eic", self.env)
        private = {self.appserver_host, self.db_host}

        def port_for(address: str) -> int | None:
            if address in private:
                return None
            if bastion_port is not None:
                return bastion_port if can_bind(address, bastion_port) else None
            return free_port(address) if can_bind(address, 0) else None

        self.vpc = vpc.seed_vpc(self._ec2, port_for)
        self.bastion_instance_id = self.vpc.bastion_id
        self.appserver_instance_id = self.vpc.appserver_id
        self.eip = self.bastion_host = self.vpc.eip
        self.bastion_port = self.vpc.bastion_port
        self.backstop_role_arn = seed_backstop_role(aws.iam_client(self.endpoint_url),
                                                    self.region, self.bastion_instance_id)
        self.restore_console_output()

    def _new_key(self, path: Path, comment: str) -> keys.KeyPair:
        if self.standins:  # ssh-keygen may be missing along with sshd
            return standins.generate_ed25519(path, comment)
        keygen = find_tool("ssh-keygen")
        assert keygen is not None  # missing_prerequisites() checked it
        return keys.generate_ed25519(path, keygen, comment)

    def _make_keys_and_stubs(self) -> None:
        key_dir = self.workdir / "keys"
        client = self._new_key(key_dir / "client_ed25519", "sandbox-client")
        self._bastion_key = self._new_key(key_dir / "bastion_host_ed25519", "sandbox-bastion")
        self._appserver_key = self._new_key(key_dir / "appserver_host_ed25519",
                                            "sandbox-appserver")
        self.client_key = client.private
        self._client_key_line = client.public_line
        self._authorized_keys = key_dir / "authorized_keys"
        self._authorized_keys.write_text(client.public_line + " sandbox-client\n")
        self.user = getpass.getuser()
        self.bastion_host_key_line = self._bastion_key.public_line
        self.bastion_host_key_fingerprint = keys.fingerprint(self._bastion_key.public_line)
        self.stub_dir = self.workdir / "stubs"
        stubs.write_stubs(self.stub_dir)
        self._wrapper = stubs.write_session_wrapper(self.workdir / "sshd" / "session.sh",
                                                    self.stub_dir)

    def _sshd(self, name: str, host: str, port: int, host_key: Path, instance_id: str) -> Sshd:
        binary, sftp = find_tool("sshd"), sftp_server()
        assert binary is not None and sftp is not None  # missing_prerequisites() checked them
        eic = self.instance_connect
        assert eic is not None  # _start_aws made it
        spec = SshdSpec(name, host, port, self.user, host_key, self._authorized_keys,
                        self.stub_dir, self._wrapper, sftp, self.workdir / "sshd",
                        keys_command=eic.keys_command, pushed_keys=eic.keys_dir(instance_id))
        return Sshd(spec, binary, self._procs)

    def _write_known_hosts(self) -> None:
        self.appserver_known_hosts_line = keys.known_hosts_line(
            self.appserver_host, self.appserver_port, self._appserver_key.public_line)
        bastion_line = keys.known_hosts_line(self.eip, self.bastion_port,
                                             self.bastion_host_key_line)
        self.known_hosts = self.workdir / "known_hosts"
        self.known_hosts.write_text(f"{bastion_line}\n{self.appserver_known_hosts_line}\n")

    def trusted_lines(self, profile: str = "foo") -> str:
        """known_hosts lines for the app, as `bastion-tray trust` writes them: keyed by the
        aliases <profile>-bastion and <profile>-appserver, not by address."""
        return (f"{profile}-bastion {self.bastion_host_key_line}\n"
                f"{profile}-appserver {self._appserver_key.public_line}\n")

    @property
    def appserver_host_key_line(self) -> str:
        return self._appserver_key.public_line

    def rekey_appserver(self) -> str:
        """Give the app server a new host key (a rebuilt machine): a fresh key, sshd restarted
        with it. Returns the new "ssh-ed25519 AAAA…" line."""
        if not isinstance(self._appserver, Sshd):
            raise SandboxError("rekey_appserver needs the real app-server sshd")
        self._appserver.stop()
        self._appserver_key = self._new_key(self._appserver_key.private, "sandbox-appserver")
        self._appserver.start()
        self._appserver.wait_answering()
        self._write_known_hosts()
        self.restore_console_output()  # a rebuilt machine prints its new keys
        return self._appserver_key.public_line

    def set_console_output(self, instance_id: str, text: str | None, *,
                           latest: bool = False) -> None:
        """What GetConsoleOutput answers for the instance (`latest`: with Latest=true; None
        there: the same as without); None: moto's canned kernel log, which lists no host keys.
        `restore_console_output` (and `reset`) undo it."""
        console.write_output(console.console_dir(self.workdir / "aws"), instance_id, text,
                             latest=latest)

    def restore_console_output(self) -> None:
        """The bastion's and the app server's console output as Amazon Linux prints it at
        first boot, with their sshd's real host-key fingerprints."""
        for instance_id, key, hostname in (
                (self.bastion_instance_id, self._bastion_key, "ip-10-0-0-5"),
                (self.appserver_instance_id, self._appserver_key, "ip-10-0-0-115")):
            self.set_console_output(instance_id, console.amazon_linux_output(
                [key.public_line], hostname))
            self.set_console_output(instance_id, None, latest=True)

    # --- using it ---------------------------------------------------------------------------

    def ec2(self) -> Any:
        """A boto3 EC2 client for this sandbox (tests drive the instance with it)."""
        return aws.ec2_client(self.endpoint_url)

    def scheduler(self) -> Any:
        """A boto3 EventBridge Scheduler client for this sandbox (tests create schedules)."""
        return aws.scheduler_client(self.endpoint_url)

    def schedules(self) -> list[str]:
        """Names of the bastion-tray-* schedules that exist now (group default)."""
        pages = self.scheduler().get_paginator("list_schedules").paginate(
            GroupName=SCHEDULE_GROUP, NamePrefix=SCHEDULE_PREFIX)
        return sorted(each["Name"] for page in pages for each in page.get("Schedules", [])
                      if each["Name"].startswith(SCHEDULE_PREFIX))

    def schedule_runs(self) -> list[ScheduleRun]:
        """Every schedule the sandbox's EventBridge Scheduler invoked so far, oldest first."""
        return self._schedule_runner.runs() if self._schedule_runner is not None else []

    def child_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for a subprocess (a daemon, the CLI) that should use this sandbox."""
        return aws.child_env(self.env, base)

    def instance_state(self) -> str:
        return aws.instance_state(self._ec2, self.bastion_instance_id)

    def bastion_ssh_up(self) -> bool:
        """Whether something at the bastion's address speaks SSH (TCP connect + banner)."""
        return ssh_banner(self.eip, self.bastion_port, timeout=1.0) is not None

    def wait_bastion_ssh(self, up: bool, timeout: float) -> float:
        """Wait until the bastion's SSH is up (or down); returns the seconds it took."""
        started = time.monotonic()
        if not wait_for(lambda: self.bastion_ssh_up() == up, timeout=timeout, interval=0.05):
            raise WaitTimeout(f"sandbox bastion SSH at {self.eip}:{self.bastion_port} still "
                              f"{'down' if up else 'up'} after {timeout:.1f}s")
        return time.monotonic() - started

    def reset(self, timeout: float = 10.0) -> None:
        """Back to the seeded state: the bastion instance stopped and its sshd down, the
        console output listing the real host keys."""
        self.restore_console_output()
        if self.instance_state() != "stopped":
            self._ec2.stop_instances(InstanceIds=[self.bastion_instance_id])
        assert self._bastion is not None
        if not wait_for(lambda: not self._bastion_running(), timeout=timeout):
            raise WaitTimeout(f"sandbox bastion sshd still running {timeout:.0f}s after the stop")
        self.wait_bastion_ssh(False, timeout)

    def _bastion_running(self) -> bool:
        return self._bastion is not None and self._bastion.is_running()

    def stub_calls(self) -> list[str]:
        return stubs.read_calls(self.stub_dir)

    def write_config(self, path: Path, *, idle_timeout: str | int = "30m",
                     warn_before: str | int = "2m",
                     extra_bastion: dict[str, Value | None] | None = None,
                     extra_settings: dict[str, Value | None] | None = None,
                     db_local_port: int | None = None, profile: str = "foo",
                     extra_host: dict[str, Value | None] | None = None) -> Path:
        """A bastion-tray config for `profile` pointing at this sandbox."""
        targets = ConfigTargets(
            self.region, vpc.BASTION_NAME, self.user, self.client_key, self.bastion_port,
            self.appserver_host, self.appserver_port, self.db_host, self.db_port,
            db_local_port if db_local_port is not None else self.db_forward_port)
        return write_config(path, targets, idle_timeout=idle_timeout, warn_before=warn_before,
                            extra_bastion=extra_bastion, extra_settings=extra_settings,
                            profile=profile, extra_host=extra_host)

    def pids(self) -> dict[str, int]:
        """Processes this sandbox runs now ("name:pid" → pid), for leak checks."""
        return self._procs.pids()

    @property
    def watcher_thread_alive(self) -> bool:
        return self._watcher is not None and self._watcher.thread.is_alive()

    # --- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the schedule runner and the watcher, then every process (sshd with all sessions,
        MariaDB, moto), then every stand-in (threads only: a failure there cannot leave a
        process behind)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self._schedule_runner is not None:
            self._schedule_runner.close()
        if self._watcher is not None:
            self._watcher.close()
        self._procs.close()
        if self.instance_connect is not None:
            self.instance_connect.close()
        if self._db is not None:
            self._db.close()
        for server in reversed(self._standin_servers):
            server.close()
        log.info("[sandbox] closed (workdir %s)", self.workdir)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
