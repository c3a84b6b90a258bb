"""The faults of issue 8 that involve a peer, against the sandbox: the real CLI and daemon, a real
sshd, moto's server — and a real TCP endpoint that accepts and never answers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion_tray.core.netguard import is_loopback
from tests.support.app import App, alive, wait_until

pytestmark = pytest.mark.timeout(120)


def control_line(app: App, line: bytes, timeout: float = 10) -> dict[str, object]:
    """Send one raw line to the daemon's control socket; its first answer line."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(app.home / "run" / "daemon.sock"))
        sock.sendall(line + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data.splitlines()[0])  # type: ignore[no-any-return]


@contextlib.contextmanager
def hanging_endpoint() -> Iterator[str]:
    """An HTTP endpoint on 127.0.0.1 that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    host, port = server.getsockname()
    assert is_loopback(host)
    try:
        yield f"http://{host}:{port}"
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


def test_the_idle_clock_resumes_after_a_sigkill_that_follows_up_with_no_connection(
        make_app: type[App]) -> None:
    app = make_app(idle_timeout="30s", warn_before="2s")
    app.cli("up", "foo", check=True)
    wait_until(lambda: (app.status()["idle_seconds"] or 0) >= 4, 15, "4 s of idle time")
    pid = app.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), 5, "the daemon to die")
    status = app.status()  # a new daemon, which reads the state file
    assert app.daemon_pid() != pid
    assert status["bastion"]["state"] == "running"
    # resumed, not restarted from zero: a lost clock would read ~0 s here
    assert (status["idle_seconds"] or 0) >= 4, status
    assert status["started_by_daemon"] is True


def test_a_state_file_of_the_wrong_shape_is_set_aside_and_the_daemon_works(
        make_app: type[App]) -> None:
    app = make_app(idle_timeout="6s", warn_before="2s")
    state = app.home / "state" / "daemon-state.json"
    state.write_text(json.dumps({"instances": {app.sandbox.bastion_instance_id: "x"}}))
    app.cli("up", "foo", check=True)
    assert state.with_suffix(".corrupt").exists()
    assert "set aside" in app.log()
    assert app.status()["bastion"]["ssh"] == "connected"
    pid = app.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGTERM)  # a clean exit stops what this daemon started
    wait_until(lambda: not alive(pid), 30, "the daemon to exit")
    assert "Traceback" not in app.log()
    wait_until(lambda: app.instance_state() in ("stopping", "stopped"), 10, "the stop at exit")


@pytest.mark.parametrize("raw", [b'{"op": "keep", "profile": "foo", "duration": 1e309}',
                                 b'{"op": "keep", "profile": "foo", "duration": NaN}',
                                 b'{"op": "keep", "profile": "foo", "duration": "99999999999h"}',
                                 b"[" * 100_000])
def test_a_bad_request_gets_an_error_line_and_the_idle_stop_still_comes(
        make_app: type[App], raw: bytes) -> None:
    app = make_app(idle_timeout="6s", warn_before="2s")
    app.cli("up", "foo", check=True)
    reply = control_line(app, raw)
    assert "error" in reply, reply
    assert app.status()["stops_in_seconds"] is not None  # status still answers, with a clock
    wait_until(lambda: app.instance_state() in ("stopping", "stopped"), 6 + 10,
               "the idle stop after a bad request")
    assert "ticker failed" not in app.log()


def test_a_hanging_ec2_endpoint_says_so_within_5_s_and_fails_within_30_s(
        make_app: type[App], tmp_path: Path) -> None:
    app = make_app()
    with hanging_endpoint() as url:
        app.env["AWS_ENDPOINT_URL"] = url
        app.env.pop("AWS_ENDPOINT_URL_EC2", None)
        began = time.monotonic()
        proc = app.popen("connect", "foo", "db", stderr=subprocess.PIPE,
                         stdout=subprocess.PIPE)
        assert proc.stderr is not None
        said_at = None
        lines = []
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            lines.append(line)
            if said_at is None and "still waiting for the EC2 API at" in line:
                said_at = time.monotonic() - began
        rc = proc.wait(10)
        took = time.monotonic() - began
    text = "".join(lines)
    assert rc == 1, text
    assert said_at is not None and said_at < 5 + 3, text  # + the daemon's own start-up
    assert took < 30 + 5, text
    assert url in text, text


def test_a_forward_open_at_a_sigkill_listens_again_after_the_restart(
        make_app: type[App]) -> None:
    """Workbench's localhost:13306 must not turn into "connection refused" after a crash."""
    import pymysql

    app = make_app(idle_timeout="5m")
    local = app.cli("connect", "foo", "db", check=True).stdout.strip()
    host, port = local.rsplit(":", 1)
    sb = app.sandbox
    conn = pymysql.connect(host=host, port=int(port), user=sb.db_user, password=sb.db_password,
                           database=sb.db_name, connect_timeout=30)
    pid = app.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), 5, "the daemon to die")
    conn.close()
    status = app.status()  # a new daemon (as the tray or the next command starts it)
    assert app.daemon_pid() not in (None, pid)
    assert status["forwards"]["db"]["listening"] is True, app.log()
    assert status["forwards"]["db"]["local"] == local
    again = pymysql.connect(host=host, port=int(port), user=sb.db_user, password=sb.db_password,
                            database=sb.db_name, connect_timeout=30)
    with again.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    again.close()
