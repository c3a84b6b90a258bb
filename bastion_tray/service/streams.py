"""A profile's streams: forwards (their listeners, the connector that waits for the bastion and
the fast path that hands a socket straight to the link's ssh master), channels and `proxy`
streams through the link. Part of ProfileRuntime (runtime.py), which owns the state they use."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bastion_tray.core import lifecycle as lc
from bastion_tray.core.errors import BastionTrayError

if TYPE_CHECKING:
    from bastion_tray.core.config import Profile, Settings
    from bastion_tray.service.links import Adapters, BastionLink, Listener

log = logging.getLogger("bastion_tray.daemon")


class Streams:
    """Mixed into ProfileRuntime: everything here reads its link, forwards and lock."""

    profile: Profile
    settings: Settings
    adapters: Adapters
    state: lc.Lifecycle
    ctx: str
    name: str
    forwards: dict[str, Listener]
    _link: BastionLink | None
    _link_attempt: int
    _lock: threading.Lock
    ensure: Callable[..., str]
    ensure_link: Callable[..., BastionLink]
    post: Callable[[lc.Event], None]
    _activity_changed: Callable[[], None]

    def open_channel(self, host: str, port: int, origin: tuple[str, int],
                     timeout: float | None = None, sock: Any = None) -> Any:
        """A channel to host:port through the bastion — or, given the accepted `sock`, what
        carries it (the ssh master: see BastionLink.stream); one retry on a link that just
        died."""
        return self._on_link(lambda link: link.stream(host, port, sock, origin)
                             if sock is not None else link.open_channel(host, port, origin),
                             timeout)

    def open_stdio(self, host: str, port: int, fd_in: int, fd_out: int) -> Any:
        """A `proxy` stream between two descriptors carried by the ssh master, or None."""
        return self._on_link(lambda link: link.stdio(host, port, fd_in, fd_out), None)

    def _on_link(self, use: Callable[[BastionLink], Any], timeout: float | None) -> Any:
        for attempt in (1, 2):
            link = self.ensure_link(timeout)
            try:
                return use(link)
            except BastionTrayError:
                if attempt == 2 or link.alive:
                    raise
                log.info("%s link died while opening a channel; reconnecting", self.ctx)
                with self._lock:
                    dead = self._link_attempt if self._link is link else None
                if dead is not None:
                    self.post(lc.LinkLost(dead, "the link died while opening a channel"))
        raise AssertionError("unreachable")

    def proxy(self, host: str, port: int) -> Any:
        """A stream to host:port (`@bastion`: the bastion's own sshd) for `proxy`."""
        if host == "@bastion":
            address = self.ensure(lc.Goal.SSH)
            return self.adapters.dial(address, port)
        return self.open_channel(host, port, ("127.0.0.1", 0))

    def open_forward(self, name: str) -> Listener:
        """Start listening on one forward (idempotent)."""
        cfg = self.profile.forwards[name]
        with self._lock:
            existing = self.forwards.get(name)
        if existing is not None and existing.listening:
            return existing

        def connector(origin: tuple[str, int], sock: Any = None) -> Any:
            return self.open_channel(cfg.remote_host, cfg.remote_port, origin,
                                     timeout=self.settings.lazy_wait, sock=sock)

        def fast(origin: tuple[str, int], sock: Any) -> Any:
            """On the accept thread: the link is up and can take the socket now, or None."""
            state = self.state
            if state.link is not lc.Link.UP or state.phase is not lc.Phase.IDLE:
                return None
            with self._lock:
                link = self._link
            return link.stream_now(cfg.remote_host, cfg.remote_port, sock) \
                if link is not None and link.alive else None

        listener = self.adapters.forward(cfg, connector, self.name, self._activity_changed,
                                         fast=fast)
        listener.start()
        with self._lock:
            self.forwards[name] = listener
        log.info("%s forward %s listening on %s:%s", self.ctx, name, cfg.bind,
                 listener.local_port)
        self.post(lc.ForwardListening(name, True))
        return listener

    def restore_forwards(self) -> None:
        """A restarted daemon listens again where its predecessor listened."""
        for name in sorted(self.state.listening):
            if name not in self.profile.forwards:
                self.post(lc.ForwardListening(name, False))
                continue
            try:
                self.open_forward(name)
            except BastionTrayError as exc:
                log.warning("%s could not listen again on forward %s: %s", self.ctx, name,
                            exc.message)

