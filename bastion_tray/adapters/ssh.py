"""One SSH transport to the bastion: connect, verify its host key, authenticate, keep it alive.

`BastionConnection` is a handle: hold it, open ``direct-tcpip`` channels through it (ProxyJump
sessions and -L forwards both ride on these), run a command on the bastion (`run`), close it.
A monitor thread sends an OpenSSH keepalive every `keepalive_interval` and declares the peer
dead when no reply came for `MISSED_KEEPALIVES` intervals — paramiko's own ``set_keepalive``
only sends, it never notices that nothing comes back (a frozen instance keeps the TCP
connection open for hours).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from types import TracebackType
from typing import Any

import paramiko

from bastion_tray.adapters.hostkeys import HostKeyStore, fingerprint, negotiate
from bastion_tray.adapters.pushed_auth import InstanceKey, authenticate_pushed
from bastion_tray.adapters.readiness import hostport, open_tcp
from bastion_tray.adapters.remote_exec import run_command
from bastion_tray.core.config import BastionConfig
from bastion_tray.core.errors import PassphraseNeeded, SSHError
from bastion_tray.core.trust import bastion_target

log = logging.getLogger(__name__)

#: per-channel receive window: 2 MiB pumped 290 MB/s (ctr) / 395-680 MB/s (gcm) on a dev box,
#: 4 MiB no more; a 128 MiB window made sshd thrash (56 MB/s)
WINDOW_SIZE = 2 * 1024 * 1024
MAX_PACKET_SIZE = 32 * 1024
#: tried first; every other cipher paramiko allows stays allowed, after these
FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")
#: the peer is dead after this many keepalive intervals without any reply
MISSED_KEEPALIVES = 3
KEEPALIVE_REQUEST = "keepalive@openssh.com"

Passphrase = Callable[[Path], "str | None"]
_CHANNEL_FAILURES = {
    1: "administratively prohibited (the bastion's sshd forbids TCP forwarding for this "
       "user or destination: AllowTcpForwarding / PermitOpen)",
    2: "connect failed (nothing listens there, or the bastion cannot reach it)",
}


class LogContext(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with ``[profile=foo bastion=host:port]``."""

    def __init__(self, profile: str, host: str, port: int) -> None:
        super().__init__(log)
        self.context = f"[profile={profile} bastion={hostport(host, port)}]"

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]
                ) -> tuple[Any, MutableMapping[str, Any]]:
        return f"{self.context} {msg}", kwargs


def _display(path: Path) -> str:
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def _tuned_transport(sock: object) -> paramiko.Transport:
    transport = paramiko.Transport(sock, default_window_size=WINDOW_SIZE,
                                   default_max_packet_size=MAX_PACKET_SIZE)
    options = transport.get_security_options()
    allowed = tuple(options.ciphers)
    fast = tuple(c for c in FAST_CIPHERS if c in allowed)
    options.ciphers = fast + tuple(c for c in allowed if c not in fast)
    transport.use_compression(False)
    return transport


def load_identity(path: Path, passphrase: Passphrase | None) -> paramiko.PKey:
    """The private key in `path`, asking `passphrase(path)` when it is encrypted.

    The passphrase is used once and dropped: never logged, never stored.
    """
    shown = _display(path)
    try:
        return paramiko.PKey.from_path(path)
    except FileNotFoundError:
        raise SSHError(f"identity_file {shown} does not exist",
                       hint="fix identity_file in the config, or remove it to use ssh-agent",
                       ) from None
    except OSError as exc:
        raise SSHError(f"cannot read identity_file {shown}: {exc.strerror}") from None
    except TypeError as exc:
        if "password" not in str(exc).lower():
            raise SSHError(f"cannot load identity_file {shown}: {exc}") from None
    except (ValueError, paramiko.SSHException, paramiko.UnknownKeyType) as exc:
        raise SSHError(f"cannot load identity_file {shown}: not a private key paramiko can use "
                       f"({exc})") from None
    if passphrase is None:
        raise SSHError(f"identity_file {shown} is encrypted and no passphrase can be asked here",
                       hint=f"add it to ssh-agent (ssh-add {shown}) or use an unencrypted key")
    secret = passphrase(path)
    if secret is None:
        raise PassphraseNeeded(f"no passphrase given for the encrypted identity_file {shown}",
                               path=str(path),
                               hint=f"run the command in a terminal to be asked for it, or add "
                                    f"the key to ssh-agent (ssh-add {shown})")
    try:
        return paramiko.PKey.from_path(path, secret.encode("utf-8"))
    except (ValueError, TypeError, paramiko.SSHException):
        raise PassphraseNeeded(f"wrong passphrase for identity_file {shown}", path=str(path),
                               wrong=True,
                               hint="try again, or add the key to ssh-agent (ssh-add)") from None
    finally:
        del secret


def _public_blob(path: Path) -> bytes | None:
    """The public key next to `path` (``path.pub``): lets an agent key stand in unprompted."""
    try:
        fields = path.with_name(path.name + ".pub").read_text().split()
        key = paramiko.PKey.from_type_string(fields[0], base64.b64decode(fields[1]))
        return bytes(key.asbytes())
    except Exception:  # no usable .pub: we simply load the private key
        return None


def authenticate(transport: paramiko.Transport, bastion: BastionConfig, where: str,
                 passphrase: Passphrase | None, profile: str, logger: LogContext,
                 instance_key: InstanceKey | None = None) -> str:
    """Public-key auth with identity_file, then ssh-agent keys; returns what worked."""
    return authenticate_with_key(transport, bastion, where, passphrase, profile, logger,
                                 instance_key)[0]


def authenticate_with_key(transport: paramiko.Transport, bastion: BastionConfig, where: str,
                          passphrase: Passphrase | None, profile: str, logger: LogContext,
                          instance_key: InstanceKey | None = None
                          ) -> tuple[str, paramiko.PKey]:
    """`authenticate`, also returning the key that worked (the data plane's master uses it).
    With `instance_key` (ec2-instance-connect), that key alone."""
    user = bastion.user
    if instance_key is not None:
        return authenticate_pushed(transport, user, f"the bastion {where}", instance_key, logger)
    tried: list[str] = []
    agent: paramiko.Agent | None = None
    try:
        agent = paramiko.Agent()
    except (paramiko.SSHException, OSError) as exc:  # an agent socket that talks nonsense
        logger.warning("ignoring ssh-agent: %s", exc)
    try:
        agent_keys = list(agent.get_keys()) if agent is not None else []
        candidates: list[tuple[str, paramiko.PKey | None]] = []  # None: load identity_file
        if bastion.identity_file is not None:
            shown = _display(bastion.identity_file)
            pub = _public_blob(bastion.identity_file)
            in_agent = [k for k in agent_keys if pub is not None and k.asbytes() == pub]
            if in_agent:  # the agent holds this very key: no need to ask for a passphrase
                agent_keys.remove(in_agent[0])
                candidates.append((f"key {shown} (via ssh-agent)", in_agent[0]))
            else:
                candidates.append((f"key {shown}", None))
        candidates += [(f"agent key {fingerprint(k)}", k) for k in agent_keys]
        for label, given in candidates:
            key = given
            if key is None and bastion.identity_file is not None:
                key = load_identity(bastion.identity_file, passphrase)
            tried.append(label)
            try:
                remaining = transport.auth_publickey(user, key)
            except paramiko.BadAuthenticationType as exc:
                allowed = ", ".join(exc.allowed_types) or "nothing"
                raise SSHError(f"the bastion {where} does not accept public-key authentication "
                               f"(it allows: {allowed})") from None
            except paramiko.AuthenticationException:
                logger.debug("%s refused", label)
                if not transport.is_active():
                    break  # sshd hung up: MaxAuthTries reached
                continue
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise SSHError(f"the bastion {where} dropped the connection during "
                               f"authentication: {str(exc) or type(exc).__name__}") from None
            if remaining:
                raise SSHError(f"the bastion {where} wants more than a key for {user} "
                               f"({', '.join(remaining)}); bastion-tray supports keys only")
            assert key is not None
            return label, key
    finally:
        if agent is not None:
            agent.close()
    n_agent = sum(1 for t in tried if t.startswith("agent key"))
    parts = [t for t in tried if not t.startswith("agent key")]
    if n_agent:
        parts.append(f"{n_agent} agent key{'s' if n_agent != 1 else ''}")
    if not parts:
        raise SSHError(f"authentication to the bastion as {user} failed: no identity_file is "
                       "configured and ssh-agent holds no key",
                       hint=f"set identity_file under [profiles.{profile}.bastion], or ssh-add "
                            "the key")
    raise SSHError(f"authentication to the bastion as {user} failed (tried {', '.join(parts)}): "
                   "check user and identity_file",
                   hint="the key must be in ~/.ssh/authorized_keys of that user on the bastion "
                        "(for EC2: the instance's key pair)")


class BastionConnection:
    """A live, authenticated SSH transport to the bastion. Close it when done."""

    def __init__(self, transport: paramiko.Transport, *, host: str, port: int, profile: str,
                 host_key: str, keepalive_interval: float,
                 on_lost: Callable[[str], None] | None, connect_seconds: float) -> None:
        self._transport = transport
        self.host, self.port, self.profile = host, port, profile
        self.host_key = host_key  # the verified fingerprint
        self.connect_seconds = connect_seconds  # TCP connect → authenticated
        self.keepalive_interval = keepalive_interval
        self._on_lost = on_lost
        self._log = LogContext(profile, host, port)
        self._lock = threading.Lock()
        self._closed = False
        self._lost_reason: str | None = None
        self._stop = threading.Event()
        self._last_reply = time.monotonic()
        self.auth_key: paramiko.PKey | None = None  # the key that authenticated (in memory)
        self.server_key: paramiko.PKey | None = None  # the host key that was verified
        self._monitor = threading.Thread(target=self._watch, daemon=True,
                                         name=f"bastion-keepalive[{profile}]")
        self._monitor.start()

    @classmethod
    def open(cls, host: str, port: int, bastion: BastionConfig, *, hostkeys: HostKeyStore,
             profile: str, keepalive_interval: float = 15, timeout: float = 15,
             passphrase: Passphrase | None = None,
             on_lost: Callable[[str], None] | None = None,
             instance_key: InstanceKey | None = None) -> BastionConnection:
        """Connect, check the host key (before any auth), authenticate, start the keepalive.

        Raises LoopbackViolation (before any packet), HostKeyError, or SSHError naming what
        failed and what to do.
        """
        where = hostport(host, port)
        logger = LogContext(profile, host, port)
        started = time.monotonic()
        sock = open_tcp(host, port, timeout=timeout)
        transport = _tuned_transport(sock)
        try:
            target = bastion_target(profile, host, port)  # trusted under foo-bastion
            options = transport.get_security_options()
            options.key_types = hostkeys.preferred_key_types(target, tuple(options.key_types))
            key = negotiate(transport, host, port, timeout=timeout)
            checked = hostkeys.verify(target, key)
            transport.auth_timeout = timeout
            method, used = authenticate_with_key(transport, bastion, where, passphrase,
                                                 profile, logger, instance_key)
        except BaseException:
            transport.close()
            sock.close()
            raise
        elapsed = time.monotonic() - started
        cipher = transport.remote_cipher
        logger.info("connected as %s with %s in %.2f s (host key %s via %s, cipher %s)",
                    bastion.user, method, elapsed, checked.fingerprint,
                    checked.matched.where if checked.matched else "?", cipher)
        link = cls(transport, host=host, port=port, profile=profile,
                   host_key=checked.fingerprint, keepalive_interval=keepalive_interval,
                   on_lost=on_lost, connect_seconds=elapsed)
        link.auth_key, link.server_key = used, key
        return link

    @property
    def alive(self) -> bool:
        return not self._closed and self._transport.is_active()

    @property
    def transport(self) -> paramiko.Transport:
        """The underlying transport, for ProxyJump sessions that need more than a channel."""
        return self._transport

    @property
    def lost_reason(self) -> str | None:
        """Why the connection died, when the monitor found it dead (None after a plain close)."""
        return self._lost_reason

    def open_channel(self, host: str, port: int, origin: tuple[str, int] = ("127.0.0.1", 0),
                     *, timeout: float = 15.0) -> paramiko.Channel:
        """A ``direct-tcpip`` channel to `host:port` as the bastion sees it (ssh -W / -L)."""
        target = hostport(host, port)
        if not self.alive:
            raise SSHError(f"cannot open a channel to {target}: the connection to the bastion "
                           f"{hostport(self.host, self.port)} is closed"
                           + (f" ({self._lost_reason})" if self._lost_reason else ""))
        try:
            return self._transport.open_channel("direct-tcpip", (host, port), origin,
                                                 timeout=timeout)
        except paramiko.ChannelException as exc:
            why = _CHANNEL_FAILURES.get(exc.code, exc.text or f"code {exc.code}")
            raise SSHError(f"the bastion could not open a connection to {target}: {why}",
                           hint="check the host and port in the config, as the bastion resolves "
                                "them, and that the target's security group admits the "
                                "bastion") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            detail = str(exc) or type(exc).__name__
            raise SSHError(f"opening a channel to {target} through the bastion failed: "
                           f"{detail}") from None

    def run(self, command: str, timeout: float) -> str:
        """`command`'s stdout on the bastion, through an exec channel of this link.

        utf-8 with bad bytes replaced, at most 1 MiB. Raises SSHError when the bastion refuses
        the exec, the command outlives `timeout` (never waited on much longer), or it exits
        non-zero (the message carries the code and stderr's first line).
        """
        where = hostport(self.host, self.port)
        if not self.alive:
            raise SSHError(f"cannot run a command: the connection to the bastion {where} is "
                           "closed" + (f" ({self._lost_reason})" if self._lost_reason else ""))
        started = time.monotonic()
        output = run_command(self._transport, command, timeout, where=where)
        self._log.debug("ran a command (%d characters out) in %.2f s", len(output),
                        time.monotonic() - started)
        return output

    # -- liveness --------------------------------------------------------------------------

    def _probe(self) -> None:
        try:
            self._transport.global_request(KEEPALIVE_REQUEST, wait=True)
        except Exception:  # a failed send shows up as is_active() going false
            return
        if self._transport.is_active():  # success and failure replies both prove liveness
            self._last_reply = time.monotonic()

    def _watch(self) -> None:
        interval = self.keepalive_interval
        tick = min(interval, 1.0)
        probe: threading.Thread | None = None
        next_probe = time.monotonic() + interval
        while not self._stop.wait(tick):
            if not self._transport.is_active():
                exc = self._transport.get_exception()
                self._lose("the bastion closed the connection"
                           + (f" ({exc})" if exc and str(exc) else ""))
                return
            now = time.monotonic()
            silent = now - self._last_reply
            if silent > MISSED_KEEPALIVES * interval:
                self._lose(f"the bastion stopped answering: no reply to keepalives for "
                           f"{silent:.1f} s")
                return
            if now >= next_probe and (probe is None or not probe.is_alive()):
                probe = threading.Thread(target=self._probe, daemon=True,
                                         name=f"bastion-keepalive-probe[{self.profile}]")
                probe.start()
                next_probe = now + interval

    def _lose(self, reason: str) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._lost_reason = reason
        self._log.warning("connection lost: %s", reason)
        self._transport.close()
        if self._on_lost is not None:
            try:
                self._on_lost(reason)
            except Exception:  # a thread has nobody else to report to
                self._log.exception("on_lost callback failed")

    def close(self) -> None:
        """Close the transport (and every channel on it) and stop the monitor. Idempotent."""
        with self._lock:
            already, self._closed = self._closed, True
        self._stop.set()
        if not already:
            self._transport.close()
            self._log.info("closed")
        if self._monitor.is_alive() and self._monitor is not threading.current_thread():
            self._monitor.join(timeout=5)

    def __enter__(self) -> BastionConnection:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "alive" if self.alive else "closed"
        return f"<BastionConnection {self.profile} {hostport(self.host, self.port)} {state}>"
