"""DataPlaneLink in process against the sandbox's real sshd and MariaDB: a dead master is
brought back (once, by one connection), and a stream handed over carries a real MySQL greeting."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion_tray.adapters import dataplane
from bastion_tray.adapters.dataplane import DataPlaneLink
from bastion_tray.adapters.muxwatch import Handed, MuxWatch
from bastion_tray.core.config import BastionConfig
from bastion_tray.sandbox import Sandbox
from tests.test_session_count import no_agent, open_link, real_bastion  # noqa: F401

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def link(real_bastion: Sandbox, tmp_path: Path, no_agent: None  # noqa: F811
         ) -> Iterator[DataPlaneLink]:
    conn = open_link(real_bastion, tmp_path)
    config = BastionConfig("i-0123456789abcdef0", None, real_bastion.user,
                           real_bastion.client_key, port=real_bastion.bastion_port)
    watch = MuxWatch()
    plane = DataPlaneLink(conn, config, mode="auto", watch=watch, keepalive_interval=15).start()
    yield plane
    plane.close()
    watch.close()


def greeting_through(link: DataPlaneLink, sb: Sandbox) -> tuple[bytes, object]:
    """Hand one end of a socket pair to the link; what MariaDB greets it with, and the stream."""
    ours, theirs = socket.socketpair()
    with ours:
        stream = link.stream(sb.db_host, sb.db_port, theirs)
        if not isinstance(stream, Handed):  # a paramiko channel: the relay's, read it here
            stream.settimeout(15)
            return stream.recv(4), stream
        ours.settimeout(15)
        return ours.recv(4), stream


def test_a_stream_through_the_master_gets_mariadbs_greeting(
        link: DataPlaneLink, real_bastion: Sandbox) -> None:  # noqa: F811
    assert link.data_plane == "openssh"
    head, stream = greeting_through(link, real_bastion)
    assert isinstance(stream, Handed)
    assert len(head) == 4 and head[3] == 0  # a MySQL packet header: sequence number 0


def test_a_dead_master_is_brought_back_by_one_connection(
        link: DataPlaneLink, real_bastion: Sandbox,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    master = link._master
    assert master is not None
    master._proc.kill()
    master._proc.wait(10)
    assert link.data_plane == "paramiko"
    monkeypatch.setattr(dataplane, "RESTART_AFTER", 0.0)
    results: list[object] = []

    def connect() -> None:
        results.append(greeting_through(link, real_bastion)[1])

    threads = [threading.Thread(target=connect) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 4  # every connection was carried, by the new master or by paramiko
    assert any(isinstance(stream, Handed) for stream in results)
    assert link.data_plane == "openssh"
    assert link._master is not None and link._master.pid != master.pid
    for stream in results:
        stream.close()  # type: ignore[attr-defined]  # a Handed stream or a paramiko channel
