"""The one place that builds the real adapters (boto3, paramiko) for the daemon."""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from bastion_tray.core.config import (
    BastionConfig,
    Config,
    ForwardConfig,
    HostConfig,
    Profile,
    Settings,
)
from bastion_tray.core.console_keys import ConsoleVerdict, unavailable
from bastion_tray.core.errors import PassphraseNeeded, SSHError
from bastion_tray.core.paths import AppPaths
from bastion_tray.core.ports import Backstop, Channel, Cloud, Ingress, Progress
from bastion_tray.core.trust import KeyTarget
from bastion_tray.service.links import Adapters, BastionLink, Listener, Pipe

log = logging.getLogger("bastion_tray.daemon")


def skip_unused_imports() -> None:
    """Keep paramiko from importing `invoke` (~15 MB of RSS in a daemon that idles all day).

    paramiko needs invoke only for `Match exec` in an ssh_config, which bastion-tray never
    parses; without it paramiko records the ImportError and goes on.
    """
    if "invoke" not in sys.modules and "paramiko" not in sys.modules:
        sys.modules["invoke"] = None  # type: ignore[assignment]


def real_adapters(config: Config, paths: AppPaths) -> Adapters:
    skip_unused_imports()
    adapters = RealAdapters(paths)
    adapters.serve_instance_connect_agents(config)
    return adapters


class RealAdapters:
    """boto3 and paramiko behind the service's `Adapters` protocol."""

    def __init__(self, paths: AppPaths) -> None:
        from bastion_tray.adapters.relay import Relay

        self._paths = paths
        self._relay = Relay(name="relay")
        self._secrets: dict[str, str] = {}  # identity file → passphrase, in memory only
        self._watch: Any = None  # the MuxWatch of streams handed to ssh masters, once needed
        self._ingress_claims: Any = None  # the LocalClaims of every profile's my-ip rule
        self._clouds: dict[str, Any] = {}  # profile name → its Ec2Cloud (the resolved id)
        self._instance_connect: dict[str, Any] = {}  # profile name → its InstanceConnect
        self._agents: list[Any] = []  # the PushingAgents OpenSSH clients find by path

    def _store(self, pin: str | None, vouch: Any = None) -> Any:
        from bastion_tray.adapters import hostkeys

        return hostkeys.HostKeyStore(self._paths.known_hosts, pin=pin, vouch=vouch)

    def console_verdict(self, profile: str, fingerprint: str,
                        instance_id: str | None = None) -> ConsoleVerdict:
        """What the console output of the bastion (or `instance_id`) says of a host key."""
        cloud = self._clouds.get(profile)
        if cloud is None:
            return unavailable(f"profile {profile} has no EC2 side to ask", instance_id)
        from bastion_tray.adapters.console import console_verdict

        return console_verdict(cloud, fingerprint, instance_id)

    def cloud(self, profile: Profile) -> Cloud:
        from bastion_tray.adapters.cloud import Ec2Cloud
        from bastion_tray.service.usage import RecordingCloud, UsageRecord, record_path

        cloud = Ec2Cloud(profile)
        self._clouds[profile.name] = cloud  # the daemon reads its config once: one per profile
        # what its answers say is recorded for `cost` (service/usage.py)
        record = UsageRecord(record_path(self._paths.state_dir, profile.name), profile.name,
                             profile.region)
        return RecordingCloud(cloud, record)

    def _eic(self, profile: Profile) -> Any:
        """The profile's EC2 Instance Connect handle (built on first use)."""
        from bastion_tray.adapters.instance_connect import InstanceConnect

        if profile.name not in self._instance_connect:
            self._instance_connect[profile.name] = InstanceConnect(profile)
        return self._instance_connect[profile.name]

    def _bastion_keys(self, profile: str, bastion: BastionConfig) -> Any:
        """identity = "ec2-instance-connect": the KeySource of one link (None otherwise). The
        instance id is the one the lifecycle's describe resolved (a Name tag, or the id)."""
        if not bastion.instance_connect:
            return None
        from bastion_tray.adapters.instance_connect import KeySource

        cloud = self._clouds.get(profile)
        if cloud is None:
            raise SSHError(f"profile {profile} has no EC2 side to push a key with")
        return KeySource(self._eic(cloud.profile),
                         functools.partial(self._bastion_id, profile, bastion.instance_id),
                         bastion.user, what="the bastion")

    def serve_instance_connect_agents(self, config: Config) -> None:
        """An agent socket per ec2-instance-connect target (the bastion, private hosts) at the
        path the generated ssh config names: `ssh foo-appserver` gets a key pushed as it asks.
        A socket another daemon serves is left to it (this one is about to find that daemon
        and exit)."""
        if os.name != "posix" or not config.profiles:
            return
        from bastion_tray.adapters.instance_connect import KeySource, PushingAgent
        from bastion_tray.core.paths import ensure_private_dir
        from bastion_tray.core.trust import bastion_alias, host_alias
        from bastion_tray.service.sshconfig import instance_connect_agent

        for profile in config.profiles.values():
            targets: list[tuple[str, Callable[[], str | None], str]] = []
            b = profile.bastion
            if b.instance_connect:
                cloud_id = functools.partial(self._bastion_id, profile.name, b.instance_id)
                targets.append((bastion_alias(profile.name), cloud_id, b.user))
            for host in profile.hosts.values():
                if host.instance_connect:
                    targets.append((host_alias(profile.name, host.name),
                                    lambda fixed=host.instance_id: fixed, host.user))
            for alias, instance_id, user in targets:
                path = instance_connect_agent(self._paths, alias)
                ensure_private_dir(path.parent)
                source = KeySource(self._eic(profile), instance_id, user, what=alias)
                try:
                    self._agents.append(PushingAgent(source, path, f"ec2-instance-connect {alias}"))
                except OSError as exc:  # a live daemon's, or no room for the path
                    log.info("not serving the ec2-instance-connect agent at %s: %s", path, exc)

    def _bastion_id(self, profile: str, configured: str | None) -> str | None:
        cloud = self._clouds.get(profile)
        return (cloud.instance_id if cloud is not None else None) or configured

    def lend_key(self, profile: Profile, host: HostConfig) -> Any:
        """A private agent serving a key just pushed to `host` (ec2-instance-connect), for the
        system ssh of `shell`; close it when the session no longer needs it."""
        from bastion_tray.adapters.agent import PrivateAgent

        if not host.instance_connect or not host.instance_id:
            raise SSHError(f"host {host.name} does not use identity = \"ec2-instance-connect\"")
        pushed = self._eic(profile).fresh_key(host.instance_id, host.user,
                                              what=f"host {host.name}")
        return PrivateAgent(pushed.key, comment=f"ec2-instance-connect {host.name}")

    def backstop(self, profile: Profile) -> Backstop:
        from bastion_tray.adapters.backstop import SchedulerBackstop

        return SchedulerBackstop(profile)

    def ingress(self, profile: Profile, settings: Settings) -> Ingress:
        from bastion_tray.adapters.ingress import LocalClaims, SshIngress

        if self._ingress_claims is None:  # one for all profiles: they may share a group
            self._ingress_claims = LocalClaims()
        return SshIngress(profile, settings.user_id, settings.public_ip_url,
                          claims=self._ingress_claims)

    def count_sessions(self, link: BastionLink) -> int:
        from bastion_tray.core import sessions

        output = link.run(sessions.COUNT_COMMAND, sessions.SESSION_COUNT_TIMEOUT)
        try:
            return sessions.count_other_sessions(output, getattr(link, "own_endpoints", []))
        except ValueError as exc:
            raise SSHError(f"could not count the SSH sessions on the bastion: {exc}",
                           hint="the bastion needs `ss` (iproute) or a readable /proc/net/tcp"
                           ) from None

    def wait_ssh(self, host: str, port: int, *, timeout: float,
                 progress: Progress | None = None) -> float:
        from bastion_tray.adapters import readiness

        return readiness.wait_until_ssh_answers(host, port, timeout=timeout, progress=progress)

    def connect(self, host: str, port: int, bastion: BastionConfig, profile: str,
                settings: Settings, on_lost: Callable[[str], None]) -> BastionLink:
        from bastion_tray.adapters.dataplane import DataPlaneLink
        from bastion_tray.adapters.ssh import BastionConnection

        keys = self._bastion_keys(profile, bastion)
        try:
            conn = BastionConnection.open(
                host, port, bastion, profile=profile, hostkeys=self._store(
                    bastion.host_key, lambda target, fp: self.console_verdict(profile, fp)),
                keepalive_interval=settings.keepalive_interval,
                passphrase=lambda path: self._secrets.get(str(path)), on_lost=on_lost,
                instance_key=keys)
        except PassphraseNeeded as exc:
            if exc.wrong:
                self._secrets.pop(exc.path, None)
            raise
        return DataPlaneLink(conn, bastion, mode=settings.data_plane, watch=self._mux_watch(),
                             keepalive_interval=settings.keepalive_interval,
                             master_key=keys).start()

    def _mux_watch(self) -> Any:
        if self._watch is None:
            from bastion_tray.adapters.muxwatch import MuxWatch

            self._watch = MuxWatch()
        return self._watch

    def remember_passphrase(self, path: str, secret: str | None) -> None:
        if secret is None:
            self._secrets.pop(path, None)
        else:
            self._secrets[path] = secret

    def forward(self, cfg: ForwardConfig, connector: Callable[[tuple[str, int], Any], Channel],
                profile: str, on_change: Callable[[], None],
                fast: Callable[[tuple[str, int], Any], Any] | None = None) -> Listener:
        from bastion_tray.adapters.forward import Forward

        return Forward(cfg, connector, self._relay, profile=profile, on_change=on_change,
                       fast=fast)

    def pipe(self, sock: Any, leftover: bytes, channel: Any,
             on_closed: Callable[[], None]) -> Pipe:
        if leftover:
            channel.sendall(leftover)
        return self._relay.add(sock, channel, lambda stats: on_closed())

    def watch_stdio(self, stream: Any, client: Any, on_closed: Callable[[], None]) -> Pipe:
        return self._mux_watch().add(stream, None, lambda stats: on_closed(), peer=client)

    def dial(self, host: str, port: int) -> Any:
        from bastion_tray.adapters import readiness

        return SocketChannel(readiness.open_tcp(host, port, timeout=15))

    def fetch_host_key(self, host: str, port: int, via: Any = None) -> tuple[str, str]:
        from bastion_tray.adapters import hostkeys

        what = "the bastion" if via is None else "the host (through the bastion)"
        key = hostkeys.fetch_host_key(host, port, via=via, what=what)
        return hostkeys.fingerprint(key), f"{key.get_name()} {key.get_base64()}"

    def host_key_status(self, target: KeyTarget, line: str,
                        pin: str | None) -> tuple[str, list[str], bool]:
        store, key = self._store(pin), _key(line)
        result = store.check(target, key)
        alias_only = store.check(target, key, legacy=False)
        recorded = (alias_only.trusted and alias_only.matched is not None
                    and alias_only.matched.path == store.app_known_hosts)
        return result.status, [e.fingerprint for e in result.conflicts], recorded

    def record_host_key(self, target: KeyTarget, line: str) -> str:
        return str(self._store(None).record(target, _key(line)))

    def close(self) -> None:
        self._relay.close()
        for agent in self._agents:
            agent.close()
        for handle in self._instance_connect.values():
            handle.close()
        if self._watch is not None:
            self._watch.close()


def _key(line: str) -> Any:
    """A paramiko key from ``"ssh-ed25519 AAAA…"``."""
    import paramiko

    kind, _, blob = line.partition(" ")
    return paramiko.PKey.from_type_string(kind, base64.b64decode(blob))


class SocketChannel:
    """A plain TCP socket dressed as a channel for the relay (`proxy @bastion`).

    It stays blocking: the relay only reads it when the selector says so, and what goes to the
    bastion's own sshd this way is an interactive SSH session, never a bulk stream.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        sock.settimeout(30)

    def fileno(self) -> int:
        return self._sock.fileno()

    def setblocking(self, flag: bool) -> None:
        return None

    def recv(self, size: int) -> bytes:
        return self._sock.recv(size)

    def send(self, data: bytes) -> int:
        self._sock.sendall(data)
        return len(data)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)

    def shutdown_write(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._sock.close()
