"""The control socket: protocol, permissions, one daemon per user, spawning, both transports.

Real sockets and real processes: a small test daemon (DAEMON_SCRIPT) runs a ControlServer with
a handler that echoes, sends progress, fails, streams and pipes. Every process a test starts is
found by its command line (it names the test's home dir) and is gone when the test ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion_tray.core.durations import KEEP_LIMIT
from bastion_tray.core.errors import ConfigError, DaemonError, UsageError, WaitTimeout
from bastion_tray.core.paths import AppPaths, app_paths
from bastion_tray.service.control import MAX_REQUEST_LINE, ControlServer, Request
from bastion_tray.service.control_client import ControlClient, LineReader, encode_line
from bastion_tray.service.spawn import ensure_daemon, peer_uid, read_pid, refusal_for_peer

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534
MIB = 1024 * 1024

DAEMON_SCRIPT = r'''
import logging, os, signal, sys, threading, time
from bastion_tray.core.errors import ConfigError, DaemonError
from bastion_tray.core.paths import app_paths
from bastion_tray.service.control import ControlServer

OPS = {"echo", "progress", "bad_config", "crash", "slow", "subscribe", "proxy"}


def handle(req):
    if req.op == "echo":
        req.reply_ok({"args": req.args})
    elif req.op == "progress":
        for second in range(3):
            req.send_event({"type": "progress", "profile": "foo", "phase": "waiting for SSH",
                            "detail": f"{second} s"})
        req.reply_ok({"ready": True})
    elif req.op == "bad_config":
        raise ConfigError("profiles.foo.bastion: needs instance_id or name",
                          hint="edit the config file")
    elif req.op == "crash":
        raise RuntimeError("boom")
    elif req.op == "slow":
        time.sleep(req.args["seconds"])
        req.reply_ok({})
    elif req.op == "subscribe":
        req.reply_ok({"type": "snapshot", "profiles": {}})
        sent = 0
        try:
            while not req.wait_closed(0.02):
                if not req.args.get("quiet"):
                    req.send_event({"type": "tick", "n": sent})
                    sent += 1
        finally:
            print(f"test-daemon: subscription ended after {sent} events", file=sys.stderr,
                  flush=True)
    elif req.op == "proxy":
        req.reply_ok({})
        sock, leftover = req.detach()
        with sock:
            sock.sendall(leftover)
            while data := sock.recv(65536):
                sock.sendall(data)


logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                    format="%(levelname)s %(name)s: %(message)s")
print(f"test-daemon: starting pid {os.getpid()}", file=sys.stderr, flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
try:
    server = ControlServer(app_paths(), handle, ops=OPS,
                           transport=sys.argv[1] if len(sys.argv) > 1 else None).start()
except DaemonError as exc:
    print(f"test-daemon: error: {exc}", file=sys.stderr, flush=True)
    sys.exit(1)
try:
    while not stop.wait(0.1):
        pass
finally:
    server.close()
print("test-daemon: stopped", file=sys.stderr, flush=True)
'''


# --- fixtures and helpers --------------------------------------------------------------------


def processes_mentioning(text: str) -> list[int]:
    """Live (not zombie) processes whose command line contains `text` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def home() -> Iterator[Path]:
    # short on purpose: an AF_UNIX path must fit in ~107 bytes, pytest's tmp_path may not
    root = Path(tempfile.mkdtemp(prefix="bt", dir="/tmp"))
    (root / "daemon.py").write_text(DAEMON_SCRIPT)
    try:
        yield root
    finally:
        leftovers = processes_mentioning(str(root))
        for pid in leftovers:
            os.kill(pid, signal.SIGTERM)
        try:
            wait_for(lambda: not processes_mentioning(str(root)), 5, "test processes to exit")
        finally:
            for pid in processes_mentioning(str(root)):
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def paths(home: Path) -> AppPaths:
    return app_paths({"BASTION_TRAY_HOME": str(home)})


def daemon_env(home: Path) -> dict[str, str]:
    return {**os.environ, "BASTION_TRAY_HOME": str(home), "PYTHONPATH": str(REPO)}


def daemon_argv(home: Path, transport: str | None = None) -> list[str]:
    return [sys.executable, str(home / "daemon.py"), *([transport] if transport else [])]


class DaemonProcess:
    """A test daemon subprocess; its stderr goes to a file the test can read."""

    def __init__(self, home: Path, transport: str | None = None) -> None:
        self.home, self.transport = home, transport
        self.log = home / f"daemon-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(daemon_argv(home, transport), env=daemon_env(home),
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def wait_ready(self) -> DaemonProcess:
        paths = app_paths({"BASTION_TRAY_HOME": str(self.home)})

        def answers() -> bool:
            assert self.proc.poll() is None, f"test daemon exited:\n{self.output()}"
            try:
                return ControlClient.connect(paths, transport=self.transport).pid == self.proc.pid
            except DaemonError:
                return False

        wait_for(answers, 15, "the test daemon to answer")
        return self

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)


@pytest.fixture
def daemon(home: Path) -> Iterator[DaemonProcess]:
    test_daemon = DaemonProcess(home).wait_ready()
    yield test_daemon
    test_daemon.stop()


def raw_exchange(paths: AppPaths, data: bytes) -> list[dict[str, Any]]:
    """Send raw bytes, half-close, return every line the daemon answers until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(paths.socket))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        reader = LineReader(sock)
        return [json.loads(line) for line in iter(reader.read_line, None)]


# --- request / reply -------------------------------------------------------------------------


def test_request_returns_the_ok_payload(paths: AppPaths, daemon: DaemonProcess) -> None:
    client = ControlClient.connect(paths)
    assert client.pid == daemon.proc.pid
    assert client.request("echo", profile="foo", port=22) == {"args": {"profile": "foo",
                                                                       "port": 22}}


def test_progress_events_arrive_before_the_reply(paths: AppPaths, daemon: DaemonProcess) -> None:
    seen: list[Any] = []
    reply = ControlClient.connect(paths).request("progress", on_event=seen.append)
    seen.append(reply)
    assert seen == [
        {"type": "progress", "profile": "foo", "phase": "waiting for SSH", "detail": "0 s"},
        {"type": "progress", "profile": "foo", "phase": "waiting for SSH", "detail": "1 s"},
        {"type": "progress", "profile": "foo", "phase": "waiting for SSH", "detail": "2 s"},
        {"ready": True},
    ]


def test_a_handler_error_is_rebuilt_with_kind_message_and_hint(paths: AppPaths,
                                                               daemon: DaemonProcess) -> None:
    with pytest.raises(ConfigError) as caught:
        ControlClient.connect(paths).request("bad_config")
    assert caught.value.message == "profiles.foo.bastion: needs instance_id or name"
    assert caught.value.hint == "edit the config file"
    assert caught.value.exit_code == 2


def test_an_unknown_op_is_a_usage_error(paths: AppPaths, daemon: DaemonProcess) -> None:
    with pytest.raises(UsageError, match=r"unknown request 'frobnicate' \(known: .*echo"):
        ControlClient.connect(paths).request("frobnicate")


def test_malformed_lines_get_usage_errors_and_the_connection_stays_usable(
        paths: AppPaths, daemon: DaemonProcess) -> None:
    replies = raw_exchange(paths, b'not json\n[1, 2]\n{"no_op": 1}\n\n{"op": "echo", "x": 1}\n')
    assert [r.get("error", {}).get("kind") for r in replies] == ["usage", "usage", "usage", None]
    assert replies[-1] == {"ok": {"args": {"x": 1}}}


def test_an_internal_error_becomes_a_daemon_error_and_the_daemon_lives_on(
        paths: AppPaths, daemon: DaemonProcess) -> None:
    client = ControlClient.connect(paths)
    with pytest.raises(DaemonError, match="internal error: RuntimeError: boom"):
        client.request("crash")
    assert client.request("echo") == {"args": {}}
    assert daemon.output().count("Traceback") == 1


def test_a_timeout_bounds_the_wait_for_the_reply(paths: AppPaths, daemon: DaemonProcess) -> None:
    began = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"did not answer 'slow' within 0\.3 s"):
        ControlClient.connect(paths).request("slow", seconds=1, timeout=0.3)
    assert time.monotonic() - began < 2


def test_no_daemon_means_a_daemon_error_that_says_so(paths: AppPaths) -> None:
    for transport in ("unix", "tcp"):
        with pytest.raises(DaemonError, match="no daemon is running"):
            ControlClient.connect(paths, transport=transport)


def test_internal_errors_are_logged_once_with_their_traceback(
        paths: AppPaths, caplog: pytest.LogCaptureFixture) -> None:
    def handle(req: Request) -> None:
        if req.op == "crash":
            raise KeyError("profile")
        if req.op == "mute":
            return  # forgets to answer
        req.reply_ok({"op": req.op})

    with caplog.at_level(logging.DEBUG, "bastion_tray.control"), ControlServer(paths, handle):
        client = ControlClient.connect(paths)
        with pytest.raises(DaemonError, match="internal error: KeyError: 'profile'") as caught:
            client.request("crash")
        assert caught.value.hint is not None and str(paths.daemon_log) in caught.value.hint
        with pytest.raises(DaemonError, match="no answer to 'mute'"):
            client.request("mute")
        assert client.request("anything") == {"op": "anything"}
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "op=crash" in tracebacks[0].getMessage()


# --- permissions and peers -------------------------------------------------------------------


def test_the_socket_is_0600_in_a_0700_runtime_dir(home: Path, paths: AppPaths) -> None:
    paths.runtime_dir.mkdir(mode=0o755)  # a dir that was too open is tightened, not trusted
    DaemonProcess(home).wait_ready()
    assert stat.S_IMODE(os.stat(paths.runtime_dir).st_mode) == 0o700
    mode = os.stat(paths.socket).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_the_uid_check_refuses_other_uids_and_passes_our_own() -> None:
    assert refusal_for_peer(1000, 1000) is None
    assert refusal_for_peer(None, 1000) is None  # a platform that cannot tell: the 0600 mode holds
    assert refusal_for_peer(NOBODY, 0) == f"refused: peer uid {NOBODY} is not the daemon's uid 0"
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert peer_uid(left) == os.getuid()


def connect_as_nobody(paths: AppPaths) -> str:
    """Fork a child that becomes nobody, connects and sends a ping; what it got back."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(5)
                    sock.connect(str(paths.socket))
                    sock.sendall(b'{"op": "ping"}\n')
                    answer = b"".join(iter(lambda: sock.recv(4096), b""))
            except OSError as exc:
                answer = type(exc).__name__.encode()
            os.write(write_end, answer)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        got = pipe.read().decode()
    os.waitpid(pid, 0)
    return got


@pytest.mark.skipif(os.geteuid() != 0, reason="becoming another uid needs root")
def test_a_peer_of_another_uid_is_refused(home: Path, paths: AppPaths,
                                          daemon: DaemonProcess) -> None:
    # The first door: the 0700 dir and 0600 socket keep nobody out.
    assert connect_as_nobody(paths) == "PermissionError"
    # The second: even with the doors opened by mistake, the uid check refuses.
    for path, mode in ((home, 0o711), (paths.runtime_dir, 0o711), (paths.socket, 0o666)):
        os.chmod(path, mode)
    reply = json.loads(connect_as_nobody(paths))
    assert reply == {"error": {"kind": "daemon", "hint": None,
                               "message": f"refused: peer uid {NOBODY} is not the daemon's uid 0"}}
    assert "refused: peer uid 65534" in daemon.output()
    assert ControlClient.connect(paths).pid == daemon.proc.pid  # we still get in


# --- one daemon per user ---------------------------------------------------------------------


def test_a_stopped_daemon_removes_its_socket_and_pidfile(paths: AppPaths,
                                                         daemon: DaemonProcess) -> None:
    assert read_pid(paths.pidfile) == daemon.proc.pid
    assert daemon.stop() == 0
    assert not paths.socket.exists() and not paths.pidfile.exists()


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_a_killed_daemons_endpoint_and_pidfile_are_cleaned_up(home: Path, paths: AppPaths,
                                                               transport: str) -> None:
    endpoint = paths.socket if transport == "unix" else paths.runtime_dir / "daemon.addr"
    dead = DaemonProcess(home, transport).wait_ready()
    dead.proc.kill()
    dead.proc.wait()
    assert endpoint.exists() and read_pid(paths.pidfile) == dead.proc.pid

    fresh = DaemonProcess(home, transport).wait_ready()
    assert read_pid(paths.pidfile) == fresh.proc.pid
    client = ControlClient.connect(paths, transport=transport)
    assert client.request("echo", n=1) == {"args": {"n": 1}}
    assert f"removing stale control endpoint {endpoint}" in fresh.output()
    assert f"stale pidfile {paths.pidfile} of dead pid {dead.proc.pid}" in fresh.output()


def test_a_second_daemon_refuses_while_the_first_runs(home: Path, paths: AppPaths,
                                                      daemon: DaemonProcess) -> None:
    second = DaemonProcess(home)
    assert second.proc.wait(15) == 1
    assert f"a daemon is already running (pid {daemon.proc.pid})" in second.output()
    assert ControlClient.connect(paths).pid == daemon.proc.pid
    assert read_pid(paths.pidfile) == daemon.proc.pid


def test_a_second_server_in_the_same_process_is_refused(paths: AppPaths) -> None:
    def handle(req: Request) -> None:
        req.reply_ok({})

    with ControlServer(paths, handle), pytest.raises(DaemonError, match="already running"):
        ControlServer(paths, handle).start()


# --- spawning --------------------------------------------------------------------------------


def test_ensure_daemon_uses_a_running_daemon(home: Path, paths: AppPaths,
                                             daemon: DaemonProcess) -> None:
    client = ensure_daemon(paths, argv=[sys.executable, "-c", "raise SystemExit(3)"],
                           log_path=paths.daemon_log)
    assert client.pid == daemon.proc.pid
    assert not paths.daemon_log.exists()  # nothing was started


def test_ensure_daemon_starts_a_detached_daemon(home: Path, paths: AppPaths) -> None:
    client = ensure_daemon(paths, argv=daemon_argv(home), env=daemon_env(home),
                           log_path=paths.daemon_log)
    assert client.request("echo", a="b") == {"args": {"a": "b"}}
    assert os.getsid(client.pid) == client.pid  # a session of its own: the terminal may close
    assert "test-daemon: starting" in paths.daemon_log.read_text()


def test_concurrent_ensure_daemon_calls_end_with_one_daemon(home: Path, paths: AppPaths) -> None:
    callers = 4
    barrier = threading.Barrier(callers)
    clients: list[ControlClient] = []

    def call() -> None:
        barrier.wait()
        clients.append(ensure_daemon(paths, argv=daemon_argv(home), env=daemon_env(home),
                                     log_path=paths.daemon_log))

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(clients) == callers
    winner = clients[0].pid
    assert {client.pid for client in clients} == {winner}
    wait_for(lambda: processes_mentioning(str(home)) == [winner], 15, "the losers to exit")
    log_text = paths.daemon_log.read_text()
    started = log_text.count("test-daemon: starting")
    assert started > 1, "the callers did not race"
    assert log_text.count("a daemon is already running (pid") == started - 1


def test_a_daemon_that_fails_to_start_reports_its_log_tail(home: Path, paths: AppPaths) -> None:
    paths.log_dir.mkdir(parents=True)
    paths.daemon_log.write_text("old line from an earlier run\n")
    script = ("import sys\nfor i in range(40): print(f'line {i}', file=sys.stderr)\n"
              "print('fatal: cannot read the config', file=sys.stderr)\nsys.exit(3)")
    with pytest.raises(DaemonError) as caught:
        ensure_daemon(paths, argv=[sys.executable, "-c", script], log_path=paths.daemon_log)
    message = caught.value.message
    assert "exited with status 3 before answering" in message
    assert "fatal: cannot read the config" in message and "line 39" in message
    assert "line 20" not in message and "old line" not in message  # the last 20 of this run


def test_a_daemon_that_never_answers_is_stopped_at_the_timeout(home: Path,
                                                               paths: AppPaths) -> None:
    script = f"# {home}\nimport time\nprint('hanging', flush=True)\ntime.sleep(60)"
    began = time.monotonic()
    with pytest.raises(DaemonError, match="did not answer within 1 s") as caught:
        ensure_daemon(paths, argv=[sys.executable, "-c", script], timeout=1,
                      log_path=paths.daemon_log)
    assert "hanging" in caught.value.message
    assert time.monotonic() - began < 5
    wait_for(lambda: not processes_mentioning(str(home)), 5, "the hung daemon to be stopped")


# --- streams and pipes -----------------------------------------------------------------------


def test_subscribe_streams_events_and_ends_when_the_client_closes(
        paths: AppPaths, daemon: DaemonProcess) -> None:
    client = ControlClient.connect(paths)
    sub = client.subscribe()
    assert sub.snapshot == {"type": "snapshot", "profiles": {}}
    events = list(itertools.islice(sub, 5))
    assert events == [{"type": "tick", "n": n} for n in range(5)]
    sub.close()
    wait_for(lambda: "subscription ended after" in daemon.output(), 5, "the stream to end")
    assert client.request("echo") == {"args": {}}  # the daemon serves on


def test_closing_the_client_wakes_a_thread_blocked_on_a_quiet_stream(
        paths: AppPaths, daemon: DaemonProcess) -> None:
    client = ControlClient.connect(paths)
    sub = client.subscribe(quiet=True)
    received: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: received.extend(sub))
    reader.start()
    time.sleep(0.2)
    client.close()
    reader.join(3)
    assert not reader.is_alive() and received == []
    wait_for(lambda: "subscription ended after 0 events" in daemon.output(), 5,
             "the daemon to notice")


def test_proxy_carries_10_mib_intact_including_bytes_behind_the_request_line(
        paths: AppPaths, daemon: DaemonProcess) -> None:
    payload = os.urandom(10 * MIB)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(paths.socket))
        # the first 64 KiB ride in the same write as the request: the server reads them with it
        sock.sendall(encode_line({"op": "proxy"}) + payload[:65536])

        def send_rest() -> None:
            sock.sendall(payload[65536:])
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send_rest)
        sender.start()
        reader = LineReader(sock)
        assert json.loads(reader.read_line() or b"") == {"ok": {}}
        received = bytearray(reader.leftover())
        while chunk := sock.recv(MIB):
            received += chunk
        sender.join(10)
    assert len(received) == len(payload)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


def test_open_pipe_returns_the_raw_socket_through_the_daemon(paths: AppPaths,
                                                             daemon: DaemonProcess) -> None:
    sock, leftover = ControlClient.connect(paths).open_pipe("proxy", host="db", port=3306)
    with sock:
        assert leftover == b""
        sock.sendall(b"SSH-2.0-test\r\n")
        assert sock.recv(100) == b"SSH-2.0-test\r\n"


def test_open_pipe_returns_the_bytes_that_came_right_behind_the_ok(paths: AppPaths) -> None:
    """A fake daemon writes the ok and the first pipe bytes (an SSH banner) in one write."""
    paths.runtime_dir.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(paths.socket))
    listener.listen()

    def fake_daemon() -> None:
        for _ in range(2):  # the client's ping, then its pipe request
            conn, _ = listener.accept()
            with conn:
                request = json.loads(LineReader(conn).read_line() or b"")
                if request["op"] == "ping":
                    conn.sendall(encode_line({"ok": {"pid": 1}}))
                else:
                    conn.sendall(encode_line({"ok": {}}) + b"SSH-2.0-OpenSSH_9.2\r\n")

    server = threading.Thread(target=fake_daemon)
    server.start()
    try:
        sock, leftover = ControlClient.connect(paths).open_pipe("proxy")
        sock.close()
    finally:
        server.join(5)
        listener.close()
    assert leftover == b"SSH-2.0-OpenSSH_9.2\r\n"


# --- the Windows strategy, exercised on Linux -----------------------------------------------


def tcp_lines(port: int, data: bytes) -> list[dict[str, Any]]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        reader = LineReader(sock)
        return [json.loads(line) for line in iter(reader.read_line, None)]


def test_tcp_transport_admits_only_clients_with_the_token(home: Path, paths: AppPaths) -> None:
    daemon = DaemonProcess(home, "tcp").wait_ready()
    addr_file = paths.runtime_dir / "daemon.addr"
    assert stat.S_IMODE(os.stat(addr_file).st_mode) == 0o600
    info = json.loads(addr_file.read_text())
    assert len(info["token"]) == 64 and not paths.socket.exists()

    client = ControlClient.connect(paths, transport="tcp")
    assert client.pid == daemon.proc.pid
    assert client.request("progress", on_event=lambda e: None) == {"ready": True}

    refused = {"error": {"kind": "daemon", "hint": None, "message":
                         "refused: the first line must be a hello with the daemon's token"}}
    wrong = encode_line({"op": "hello", "token": "0" * 64}) + encode_line({"op": "echo"})
    assert tcp_lines(info["port"], wrong) == [refused]
    assert tcp_lines(info["port"], encode_line({"op": "echo"})) == [refused]
    assert tcp_lines(info["port"], encode_line({"op": "hello"}) + b'{"op": "echo"}\n') == [refused]
    addr_file.write_text(json.dumps({**info, "token": "f" * 64}))  # a client with a wrong token
    with pytest.raises(DaemonError, match="refused: the first line must be a hello"):
        ControlClient.connect(paths, transport="tcp")
    addr_file.write_text(json.dumps(info))
    right = encode_line({"op": "hello", "token": info["token"]}) + encode_line({"op": "echo"})
    with socket.create_connection(("127.0.0.1", info["port"]), timeout=10) as sock:
        sock.sendall(right)
        assert json.loads(LineReader(sock).read_line() or b"") == {"ok": {"args": {}}}

    assert daemon.stop() == 0
    assert not addr_file.exists()


# --- robust inputs (issue 8): whatever a peer sends, an error line, and the server lives on ---


def robust_handler(req: Request) -> None:
    """An in-process handler for the limits tests: typed args, a duration, a stream, a pipe."""
    if req.op == "typed":
        req.reply_ok({"n": req.arg("n", int, required=True), "name": req.arg("name", str, "x"),
                      "ratio": req.arg("ratio", float, 1.0), "lazy": req.arg("lazy", bool, False)})
    elif req.op == "keep":
        req.reply_ok({"seconds": req.duration("duration", maximum=KEEP_LIMIT, default=3600)})
    elif req.op == "slow":
        time.sleep(float(req.args["seconds"]))
        req.reply_ok({})
    elif req.op == "subscribe":
        req.reply_ok({"type": "snapshot"})
        # silent for `hold` seconds, longer than the idle timeout, then one event
        if not req.wait_closed(float(req.args["hold"])):
            req.send_event({"type": "still here"})
            req.wait_closed()
    elif req.op == "proxy":
        req.reply_ok({})
        sock, leftover = req.detach()
        with sock:
            sock.sendall(leftover)
            while data := sock.recv(65536):
                sock.sendall(data)
    else:
        req.reply_ok({"op": req.op, "args": req.args})


ROBUST_OPS = {"echo", "typed", "keep", "slow", "subscribe", "proxy"}


class RawConnection:
    """A raw client of the control socket: bytes out, reply lines in."""

    def __init__(self, paths: AppPaths, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(paths.socket))
        self.reader = LineReader(self.sock)

    def send(self, data: bytes) -> RawConnection:
        self.sock.sendall(data)
        return self

    def reply(self) -> dict[str, Any] | None:
        """The next line, None at the end of the stream (a reset after the last line too)."""
        try:
            line = self.reader.read_line()
        except ConnectionResetError:
            return None
        return None if line is None else json.loads(line)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def serve(paths: AppPaths) -> Iterator[Any]:
    """Start an in-process ControlServer with `robust_handler` and the given limits."""
    servers: list[ControlServer] = []

    def start(**limits: Any) -> ControlServer:
        servers.append(ControlServer(paths, robust_handler, ops=ROBUST_OPS, **limits).start())
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def usage_message(reply: dict[str, Any] | None) -> str:
    assert reply is not None and reply["error"]["kind"] == "usage", reply
    return str(reply["error"]["message"])


ECHO = encode_line({"op": "echo", "x": 1})
ECHOED = {"ok": {"op": "echo", "args": {"x": 1}}}


def test_a_deeply_nested_line_is_answered_and_the_connection_lives_on(
        paths: AppPaths, serve: Any) -> None:
    # issue 8: "[" * 100000 raised RecursionError in the connection's thread: EOF, no answer
    serve()
    conn = RawConnection(paths).send(b"[" * 100_000 + b"\n" + ECHO)
    assert "nested deeper than 32 levels" in usage_message(conn.reply())
    assert conn.reply() == ECHOED
    deep_arg = b'{"op": "echo", "x": ' + b"[" * 33 + b"]" * 33 + b"}\n"
    assert "nested deeper than 32 levels" in usage_message(conn.send(deep_arg).reply())
    assert conn.send(ECHO).reply() == ECHOED


def test_nesting_up_to_the_limit_and_brackets_in_strings_are_fine(paths: AppPaths,
                                                                  serve: Any) -> None:
    serve()
    nested: Any = []
    for _ in range(30):  # 30 levels, inside {"args": ...} inside {"ok": ...}: 32 in the reply
        nested = [nested]
    request = {"op": "echo", "deep": nested, "text": "[{" * 10_000}
    conn = RawConnection(paths).send(encode_line(request))
    assert conn.reply() == {"ok": {"op": "echo", "args": {"deep": nested, "text": "[{" * 10_000}}}


def test_a_line_past_the_size_limit_is_answered_before_the_close(paths: AppPaths,
                                                                 serve: Any) -> None:
    serve()
    conn = RawConnection(paths)

    def flood() -> None:  # 3 MiB without a newline; the server stops reading after 1 MiB
        with contextlib.suppress(OSError):
            conn.sock.sendall(b"x" * (3 * MIB))

    sender = threading.Thread(target=flood)
    sender.start()
    try:
        message = usage_message(conn.reply())
    finally:
        sender.join(10)
    assert f"line longer than {MAX_REQUEST_LINE} bytes" in message
    assert conn.reply() is None  # and then it closes: the rest of that stream is unreadable


# (what is wrong, the line, text the usage error must contain)
MALFORMED = [
    ("not JSON", b"not json", "one JSON object per line"),
    ("an array", b"[1, 2]", "expected a JSON object, got an array"),
    ("a string", b'"op"', "got a string"),
    ("null", b"null", "got null"),
    ("a number", b"42", "got a number"),
    ("no op", b'{"no_op": 1}', 'no "op"'),
    ("op a number", b'{"op": 7}', '"op" must be a non-empty string, got 7'),
    ("op empty", b'{"op": ""}', '"op" must be a non-empty string'),
    ("op null", b'{"op": null}', '"op" must be a non-empty string, got None'),
    ("op an object", b'{"op": {"op": "echo"}}', '"op" must be a non-empty string'),
    ("op a 1 MB string", b'{"op": "' + b"a" * 1_000_000 + b'"}', "unknown request 'aaa"),
    ("not UTF-8", b'{"op": "echo", "x": "\xff\xfe"}', "not UTF-8 text"),
    ("NaN", b'{"op": "echo", "x": NaN}', "NaN is not a JSON number"),
    ("Infinity", b'{"op": "echo", "x": Infinity}', "Infinity is not a JSON number"),
    ("-Infinity", b'{"op": "echo", "x": -Infinity}', "-Infinity is not a JSON number"),
    ("1e309, which json.loads makes infinite", b'{"op": "echo", "x": 1e309}', "out of range"),
    ("unterminated", b'{"op": "echo"', "one JSON object per line"),
    ("arg n a string", b'{"op": "typed", "n": "3"}', "'n' must be an integer, got '3'"),
    ("arg n a boolean", b'{"op": "typed", "n": true}', "'n' must be an integer, got True"),
    ("arg n missing", b'{"op": "typed"}', "needs 'n' (an integer)"),
    ("arg name a list", b'{"op": "typed", "n": 1, "name": [1]}', "'name' must be a string"),
    ("arg lazy a number", b'{"op": "typed", "n": 1, "lazy": 1}', "'lazy' must be true or false"),
    ("keep far too long", b'{"op": "keep", "duration": "99999999999999999999h"}',
     "keep: at most 7 d, got '99999999999999999999h'"),
    ("keep a huge integer", b'{"op": "keep", "duration": 1' + b"0" * 400 + b"}",
     "keep: at most 7 d"),
    ("keep negative", b'{"op": "keep", "duration": -5}', "keep: expected a duration ≥ 0"),
    ("keep a boolean", b'{"op": "keep", "duration": false}', "keep: expected a duration"),
]


@pytest.mark.parametrize(("line", "expect"), [(line, x) for _, line, x in MALFORMED],
                         ids=[name for name, _, _ in MALFORMED])
def test_a_malformed_request_gets_a_usage_error_and_the_connection_stays_usable(
        paths: AppPaths, serve: Any, line: bytes, expect: str) -> None:
    serve()
    conn = RawConnection(paths).send(line + b"\n" + ECHO)
    message = usage_message(conn.reply())
    assert expect in message
    assert len(message) < 300  # a 1 MB op is not echoed back
    assert conn.reply() == ECHOED


def test_well_typed_args_and_a_bounded_duration_pass(paths: AppPaths, serve: Any) -> None:
    serve()
    client = ControlClient.connect(paths)
    assert client.request("typed", n=3, ratio=2, lazy=True) == {"n": 3, "name": "x",
                                                               "ratio": 2.0, "lazy": True}
    assert client.request("keep") == {"seconds": 3600}
    assert client.request("keep", duration="7d") == {"seconds": KEEP_LIMIT}


def test_the_client_never_sends_nan(paths: AppPaths, serve: Any) -> None:
    serve()
    with pytest.raises(UsageError, match="cannot send 'keep'"):
        ControlClient.connect(paths).request("keep", duration=float("nan"))


def test_a_silent_connection_is_closed_with_an_error_after_the_idle_timeout(
        paths: AppPaths, serve: Any) -> None:
    serve(idle_timeout=0.5)
    began = time.monotonic()
    conn = RawConnection(paths)  # connects, sends nothing
    reply = conn.reply()
    waited = time.monotonic() - began
    assert reply is not None and reply["error"]["kind"] == "daemon", reply
    assert "no complete request within 0.5 s" in reply["error"]["message"]
    assert conn.reply() is None
    assert 0.4 < waited < 5


def test_half_a_line_trickled_byte_by_byte_still_times_out(paths: AppPaths,
                                                           serve: Any) -> None:
    serve(idle_timeout=0.5)
    conn = RawConnection(paths).send(b'{"op": "ec')
    stop = threading.Event()

    def trickle() -> None:  # a byte every 0.1 s: each recv is quick, the line never completes
        with contextlib.suppress(OSError):
            while not stop.wait(0.1):
                conn.sock.send(b" ")

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        reply = conn.reply()
    finally:
        stop.set()
        sender.join(5)
    assert reply is not None and "no complete request within 0.5 s" in reply["error"]["message"]


def test_the_idle_timeout_does_not_cut_a_request_at_work_and_restarts_after_it(
        paths: AppPaths, serve: Any) -> None:
    serve(idle_timeout=0.5)
    conn = RawConnection(paths).send(encode_line({"op": "slow", "seconds": 1.2}))
    assert conn.reply() == {"ok": {}}  # 1.2 s of work is not idleness
    assert conn.send(ECHO).reply() == ECHOED  # a fresh 0.5 s for the next line
    reply = conn.reply()
    assert reply is not None and "no complete request" in reply["error"]["message"]


def test_a_subscription_and_a_pipe_are_exempt_from_the_idle_timeout(paths: AppPaths,
                                                                   serve: Any) -> None:
    serve(idle_timeout=0.5)
    client = ControlClient.connect(paths)
    with client.subscribe(hold=1.5) as sub:  # the stream stays silent for 3 idle timeouts
        assert next(iter(sub)) == {"type": "still here"}
    sock, _ = client.open_pipe("proxy")
    with sock:
        sock.settimeout(10)
        time.sleep(1.5)  # silent for 3 idle timeouts: a pipe's quiet is not idleness
        sock.sendall(b"SSH-2.0-test\r\n")
        assert sock.recv(100) == b"SSH-2.0-test\r\n"


def test_the_connection_past_the_limit_is_refused_and_the_others_are_served(
        paths: AppPaths, serve: Any) -> None:
    server = serve(max_connections=2)
    held = [RawConnection(paths), RawConnection(paths)]
    wait_for(lambda: server.active_connections == 2, 5, "both connections to be served")

    refused = RawConnection(paths)
    reply = refused.reply()
    assert reply is not None and reply["error"] == {
        "kind": "daemon", "message": "too many control connections (limit 2)",
        "hint": "close a tray, a subscription or a stuck client, then try again"}
    assert refused.reply() is None
    with pytest.raises(DaemonError, match=r"too many control connections \(limit 2\)"):
        ControlClient.connect(paths)  # the client reports the refusal, however it raced

    assert held[0].send(ECHO).reply() == ECHOED  # the daemon serves the others
    held[1].close()
    wait_for(lambda: server.active_connections == 1, 5, "the closed connection to be freed")
    assert ControlClient.connect(paths).request("echo", x=1) == ECHOED["ok"]
    assert server.active_connections <= 2
    held[0].close()


def test_a_detached_pipe_does_not_count_against_the_limit(paths: AppPaths,
                                                          serve: Any) -> None:
    server = serve(max_connections=1)
    sock, _ = ControlClient.connect(paths).open_pipe("proxy")
    with sock:
        wait_for(lambda: server.active_connections == 0, 5, "the pipe to be detached")
        assert ControlClient.connect(paths).request("echo", x=1) == ECHOED["ok"]
        sock.settimeout(10)
        sock.sendall(b"ping")
        assert sock.recv(100) == b"ping"


def test_at_the_limit_a_client_is_not_refused_for_the_connection_it_just_closed(
        paths: AppPaths, serve: Any) -> None:
    # connect() pings on one connection, request() comes on the next: at a limit of 1 the
    # ping's thread may not have seen its EOF yet when the request arrives
    serve(max_connections=1)
    for n in range(20):
        assert ControlClient.connect(paths).request("echo", x=n) == {"op": "echo",
                                                                     "args": {"x": n}}
