"""The daemon's answers to control-socket requests, one method per op.

Long waits (`up`, `connect`, `proxy`, `start`, `hostkey`) relay the profile's progress events
to the client while they wait, so the CLI and the tray can show "waiting for SSH… 3 s".
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from bastion_tray.core.durations import KEEP_LIMIT, parse_bounded_duration
from bastion_tray.core.errors import BastionTrayError, SSHError, UsageError
from bastion_tray.core.trust import normalize_fingerprint
from bastion_tray.service import trusting, usage
from bastion_tray.service.control import Request
from bastion_tray.service.control_client import encode_line
from bastion_tray.service.events import EventBus
from bastion_tray.service.runtime import ProfileRuntime

log = logging.getLogger("bastion_tray.daemon")

STDIO_FDS_TIMEOUT = 10.0  # a proxy client that asked to pass its stdio sends it at once

PROGRESS_TYPES = {"progress", "ready", "error", "instance"}
#: how long a key lent to `shell`'s ssh (lend-key) stays on its agent: AWS accepts it 60 s
LENT_KEY_TTL = 120.0


def _arg(req: Request, key: str) -> Any:
    value = req.args.get(key)
    if value is None:
        raise UsageError(f"request {req.op!r} needs {key!r}")
    return value


class Handlers:
    """One method per op. Knows the daemon only by what it is handed: the profiles' runtimes,
    a status function, the event bus and a way to ask for shutdown."""

    def __init__(self, runtime: Callable[[object], ProfileRuntime],
                 status: Callable[..., dict[str, Any]], bus: EventBus,
                 request_shutdown: Callable[[], None]) -> None:
        self.runtime, self.bus = runtime, bus
        # each profile's `cost` figures ride along in every status (the tray shows them)
        self.status: Callable[..., dict[str, Any]] = lambda *a, **kw: usage.add_costs(
            status(*a, **kw), lambda name: runtime(name).cloud)
        self.request_shutdown = request_shutdown

    def handle(self, req: Request) -> None:
        method = getattr(self, "op_" + req.op.replace("-", "_"), None)
        if method is None:
            raise UsageError(f"unknown request {req.op!r}")
        secret = req.args.pop("passphrase", None)
        if isinstance(secret, str):  # a client asked its user for the key's passphrase
            self.runtime(req.args.get("profile")).remember_passphrase(secret)
        method(req)

    # ---- helpers ---------------------------------------------------------------------------

    def _with_progress(self, req: Request, rt: ProfileRuntime, work: Callable[[], Any]) -> Any:
        """Run `work` in a thread; meanwhile forward the profile's progress events to `req`."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["result"] = work()
            except BaseException as exc:  # re-raised in the request's thread below
                box["error"] = exc

        with self.bus.subscribe(
                lambda e: e.get("profile") == rt.name and e.get("type") in PROGRESS_TYPES) as sub:
            worker = threading.Thread(target=run, name=f"{req.op}-{rt.name}", daemon=True)
            worker.start()
            while worker.is_alive():
                event = sub.get(timeout=0.1)
                if event is not None and event["type"] == "progress":
                    req.send_event(event)
            worker.join()
        if "error" in box:
            raise box["error"]
        return box.get("result")

    # ---- ops -------------------------------------------------------------------------------

    def op_status(self, req: Request) -> None:
        req.reply_ok(self.status(wait_discovery=10.0))

    def op_start(self, req: Request) -> None:
        rt = self.runtime(req.args.get("profile"))
        self._with_progress(req, rt, rt.ensure_link)
        req.reply_ok(rt.snapshot())

    def op_up(self, req: Request) -> None:
        rt = self.runtime(req.args.get("profile"))
        for name in rt.profile.forwards:
            rt.open_forward(name)
        self._with_progress(req, rt, rt.ensure_link)
        req.reply_ok(rt.snapshot())

    def op_connect(self, req: Request) -> None:
        rt = self.runtime(req.args.get("profile"))
        name = rt.profile.forward(str(req.args.get("forward"))).name
        listener = rt.open_forward(name)
        if not req.args.get("lazy"):
            self._with_progress(req, rt, rt.ensure_link)
        cfg = rt.profile.forwards[name]
        req.reply_ok({"local": f"{cfg.bind}:{listener.local_port}", "forward": name,
                      "profile": rt.name})

    def op_proxy(self, req: Request) -> None:
        rt = self.runtime(req.args.get("profile"))
        host, port = _arg(req, "host"), _arg(req, "port")
        if not isinstance(host, str) or not host:
            raise UsageError(f"host must be a name or address, got {host!r:.60}")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise UsageError(f"port must be 1–65535, got {port!r:.60}")
        if host != "@bastion" and req.args.get("stdio") is True and hasattr(socket, "recv_fds"):
            link = self._with_progress(req, rt, rt.ensure_link)
            if link.data_plane == "openssh":
                self._proxy_stdio(req, rt, host, port)
                return
        channel = self._with_progress(req, rt, lambda: rt.proxy(host, port))
        rt.session_opened()
        try:
            req.reply_ok({"profile": rt.name, "host": host, "port": port})
            sock, leftover = req.detach()
        except BaseException:
            channel.close()
            rt.session_closed()
            raise
        rt.adapters.pipe(sock, leftover, channel, rt.session_closed)

    def _proxy_stdio(self, req: Request, rt: ProfileRuntime, host: str, port: int) -> None:
        """The proxy client's stdin/stdout go to the ssh master, which carries the bytes: ask
        for the two descriptors, hand them over, say so, and count the session until the
        master closes the stream (or the client goes away)."""
        req.reply_ok({"profile": rt.name, "host": host, "port": port, "stdio": "send"})
        sock, _ = req.detach()
        fds: list[int] = []
        try:
            sock.settimeout(STDIO_FDS_TIMEOUT)
            _, fds, _, _ = socket.recv_fds(sock, 16, 2)
            if len(fds) != 2:
                raise UsageError(f"proxy: expected 2 descriptors (stdin, stdout), got {len(fds)}")
            stream = rt.open_stdio(host, port, fds[0], fds[1])
            if stream is None:
                raise SSHError("the ssh master went away while the proxy was being set up",
                               hint="run the command again")
        except (BastionTrayError, OSError) as exc:
            error = exc if isinstance(exc, BastionTrayError) else SSHError(
                f"proxy: the client's descriptors did not arrive: {exc}")
            with contextlib.suppress(OSError):
                sock.sendall(encode_line({"error": {"kind": error.kind, "message": error.message,
                                                    "hint": error.hint}}))
            sock.close()
            return
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)  # the master holds its own copies now
        rt.session_opened()
        log.info("%s proxy to %s:%d handed to the ssh master", rt.ctx, host, port)
        try:
            sock.settimeout(None)
            sock.sendall(encode_line({"handed": {"host": host, "port": port}}))
        except OSError:
            pass  # the client is gone already: the watch ends the stream at once
        rt.adapters.watch_stdio(stream, sock, rt.session_closed)

    def op_stop(self, req: Request) -> None:
        rt = self.runtime(req.args.get("profile"))
        force = req.args.get("force", False)
        if not isinstance(force, bool):
            raise UsageError(f"force must be true or false, got {force!r:.60}")
        reason = "stopped by request" + (" (--force)" if force else "")
        state = rt.stop(reason, close_listeners=True, force=force)
        req.reply_ok({"profile": rt.name, "state": state})

    def op_keep(self, req: Request) -> None:
        rt = self.runtime(req.args.get("profile"))
        seconds = keep_seconds(req.args.get("duration", 3600))
        rt.keep_running(seconds)
        req.reply_ok(rt.snapshot())

    def op_hostkey(self, req: Request) -> None:
        """A host's key as it answers now (the bastion, starting it when needed, or a private
        host through it) and whether the app trusts it."""
        rt = self.runtime(req.args.get("profile"))
        host = _host_arg(req)
        req.reply_ok(self._with_progress(req, rt, lambda: trusting.host_key(rt, host)))

    def op_trust(self, req: Request) -> None:
        """Record a host's key, but only if it is the one the user confirmed."""
        rt = self.runtime(req.args.get("profile"))
        host = _host_arg(req)
        wanted = _arg(req, "fingerprint")
        if not isinstance(wanted, str):
            raise UsageError(f"fingerprint must be a string, got {wanted!r:.60}")
        try:
            wanted = normalize_fingerprint(wanted)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        req.reply_ok(self._with_progress(req, rt, lambda: trusting.trust(rt, wanted, host)))

    def op_lend_key(self, req: Request) -> None:
        """ec2-instance-connect for a private host's system ssh (`shell`): push a fresh key to
        the host's instance and serve it on a private agent socket until the client closes
        this connection (at most LENT_KEY_TTL). The key never leaves the daemon's memory."""
        rt = self.runtime(req.args.get("profile"))
        host = rt.profile.host(str(_arg(req, "host")))
        if not host.instance_connect:
            raise UsageError(f"host {host.name} of profile {rt.name} does not use identity = "
                             '"ec2-instance-connect"')
        agent = rt.adapters.lend_key(rt.profile, host)
        try:
            req.reply_ok({"profile": rt.name, "host": host.name, "agent": str(agent.path),
                          "instance_id": host.instance_id, "ttl": LENT_KEY_TTL})
            sock, _ = req.detach()
        except BaseException:
            agent.close()
            raise
        log.info("%s a key pushed to host %s (%s) is lent on %s until the session ends",
                 rt.ctx, host.name, host.instance_id, agent.path)
        threading.Thread(target=_lend_until_closed, args=(sock, agent, rt.ctx, host.name),
                         daemon=True, name=f"lent-key-{rt.name}-{host.name}").start()

    def op_cost(self, req: Request) -> None:
        """Running hours and USD of one profile (`profile`) or all, from the daemon's record
        of what it saw (service/usage.py); waits like `status` for the start-up describe."""
        name = req.args.get("profile")
        wanted = None if name is None else self.runtime(name).name
        profiles = self.status(wait_discovery=10.0)["profiles"]
        req.reply_ok({"profiles": {
            n: p.get("cost") or usage.empty_cost(self.runtime(n).profile.region)
            for n, p in profiles.items() if wanted is None or n == wanted}})

    def op_subscribe(self, req: Request) -> None:
        """A snapshot, then every event with a fresh status, until the client goes away."""
        with self.bus.subscribe() as sub:
            req.reply_ok(self.status(wait_discovery=10.0))
            last_beat = time.monotonic()
            while not req.closed:
                event = sub.get(timeout=1.0)
                if event is None:
                    if time.monotonic() - last_beat < 5:
                        continue
                    event = {"type": "heartbeat"}
                last_beat = time.monotonic()
                try:
                    req.send_event({**event, "status": self.status()})
                except (OSError, BastionTrayError):
                    return

    def op_shutdown(self, req: Request) -> None:
        req.reply_ok({"pid": self.status()["daemon"]["pid"]})
        self.request_shutdown()


def _lend_until_closed(sock: socket.socket, agent: Any, ctx: str, host: str) -> None:
    """Serve a lent key until its client goes away (its ssh session ended) or the TTL."""
    deadline = time.monotonic() + LENT_KEY_TTL
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(4096):
                break
    except OSError:  # timeout or reset: the agent goes either way
        pass
    finally:
        agent.close()
        sock.close()
    log.info("%s the key lent for host %s is gone", ctx, host)


def _host_arg(req: Request) -> str | None:
    """The optional `host` of hostkey/trust: a name of the profile's hosts (None: the bastion)."""
    host = req.args.get("host")
    if host is not None and not isinstance(host, str):
        raise UsageError(f"host must be a host name of the profile, got {host!r:.60}")
    return host


def keep_seconds(value: object) -> float:
    """`keep`'s duration from the control socket: finite, ≥ 0, at most KEEP_LIMIT (7 d)."""
    try:
        return parse_bounded_duration(value, maximum=KEEP_LIMIT, what="keep")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
