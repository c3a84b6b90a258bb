"""The engine end to end: the real CLI and daemon against the sandbox VPC (real sshd, real
MariaDB, moto's server as the AWS endpoint). No mocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymysql
import pytest

from bastion_tray.sandbox import Sandbox
from tests.support.app import App, alive, wait_until
from tests.support.console import no_console_output

pytestmark = pytest.mark.timeout(120)


def query(port: int, sb: Sandbox, sql: str = "SELECT VERSION()",
          connect_timeout: float = 10) -> tuple[pymysql.Connection, str]:  # type: ignore[type-arg]
    conn = pymysql.connect(host="127.0.0.1", port=port, user=sb.db_user, password=sb.db_password,
                           database=sb.db_name, connect_timeout=connect_timeout, read_timeout=30)
    with conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
    return conn, str(row[0])


def local_port(local: str) -> int:
    host, _, port = local.rpartition(":")
    assert host == "127.0.0.1"
    return int(port)


def test_a_connect_from_stopped_starts_the_bastion_and_serves_mysql(make_app: type[App]) -> None:
    app = make_app()
    assert app.instance_state() == "stopped"
    proc = app.cli("connect", "foo", "db", check=True)
    port = local_port(proc.stdout.strip())
    assert "starting instance" in proc.stderr and "waiting for SSH" in proc.stderr
    conn, version = query(port, app.sandbox)
    assert "MariaDB" in version
    status = app.status()
    assert status["bastion"]["state"] == "running"
    assert status["bastion"]["ssh"] == "connected"
    assert status["bastion"]["host"] == app.sandbox.bastion_host
    assert status["forwards"]["db"]["listening"] is True
    assert status["forwards"]["db"]["active_connections"] == 1
    assert status["idle_seconds"] is None and status["stops_in_seconds"] is None
    conn.close()
    wait_until(lambda: app.status()["forwards"]["db"]["active_connections"] == 0, 5,
               "the closed connection to be counted out")
    assert app.status()["stops_in_seconds"] is not None


def test_b_ssh_config_with_system_ssh_reaches_the_app_server(make_app: type[App],
                                                             tmp_path: Path) -> None:
    app = make_app()
    block = app.cli("ssh-config", "foo", check=True).stdout
    assert "Host foo-appserver" in block and "Host foo-bastion" in block
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(block)
    app.cli("trust", "foo", "appserver", "--yes", check=True)  # through the bastion
    proc = subprocess.run(  # the block alone says where keys come from, and to be strict
        ["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "foo-appserver", "echo",
         "app:$(hostname)"], env=app.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + app.log()
    assert proc.stdout.startswith("app:")
    assert app.instance_state() == "running"


def test_c_idle_timeout_stops_the_bastion_but_not_while_connected(make_app: type[App]) -> None:
    app = make_app(idle_timeout="4s", warn_before="2s")
    port = local_port(app.cli("connect", "foo", "db", check=True).stdout.strip())
    conn, _ = query(port, app.sandbox)
    time.sleep(12)  # 3x the timeout with a connection open
    assert app.instance_state() == "running"
    assert app.status()["forwards"]["db"]["active_connections"] == 1
    conn.close()
    closed_at = time.monotonic()
    wait_until(lambda: app.instance_state() == "stopped", 4 + 3 + 1, "the idle stop")
    assert time.monotonic() - closed_at <= 4 + 3
    assert "idle" in app.log() and "stopping" in app.log()
    assert app.status()["forwards"]["db"]["listening"] is True  # listeners stay open


def test_d_lazy_forward_starts_the_bastion_on_first_connection(make_app: type[App]) -> None:
    app = make_app()
    port = local_port(app.cli("connect", "foo", "db", "--lazy", check=True).stdout.strip())
    assert app.instance_state() == "stopped"
    conn, version = query(port, app.sandbox, connect_timeout=30)
    conn.close()
    assert "MariaDB" in version
    assert app.instance_state() == "running"


def test_e_host_keys_unknown_then_trusted_then_changed(make_app: type[App]) -> None:
    app = make_app(trusted=False)
    with no_console_output(app.sandbox):  # else the console output vouches for it at once
        proc = app.cli("up", "foo")
    assert proc.returncode == 1, proc.stderr
    assert app.sandbox.bastion_host_key_fingerprint in proc.stderr
    assert "bastion-tray trust foo" in proc.stderr
    trust = app.cli("trust", "foo", "--yes", check=True)
    assert app.sandbox.bastion_host_key_fingerprint in trust.stdout
    assert app.cli("up", "foo").returncode == 0
    app.cli("stop", "foo", check=True)
    # a changed key: known_hosts holds another key for the same host:port
    other = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl")
    app.known_hosts.write_text(f"[{app.sandbox.bastion_host}]:{app.sandbox.bastion_port} "
                               f"{other}\n")
    before = app.known_hosts.read_bytes()
    proc = app.cli("up", "foo")
    assert proc.returncode == 1
    assert "changed" in proc.stderr.lower()
    assert app.known_hosts.read_bytes() == before


def test_f_bad_input_gets_exit_codes_and_names(make_app: type[App]) -> None:
    app = make_app()
    proc = app.cli("connect", "nope", "db")
    assert proc.returncode == 2 and "known profiles: foo" in proc.stderr
    proc = app.cli("connect", "foo", "nope")
    assert proc.returncode == 2 and "known forwards: db" in proc.stderr
    proc = app.cli("shell", "foo", "nope")
    assert proc.returncode == 2 and "known hosts: appserver" in proc.stderr


def test_f_port_in_use_names_the_port(make_app: type[App]) -> None:
    import socket

    app = make_app()
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    app2 = make_app(db_local_port=port)
    proc = app2.cli("connect", "foo", "db")
    holder.close()
    assert proc.returncode == 1
    assert str(port) in proc.stderr and "in use" in proc.stderr
    del app


def test_f_aws_errors_exit_1_with_the_message(make_app: type[App]) -> None:
    app = make_app(extra_bastion={"name": None, "instance_id": "i-0123456789abcdef0"})
    proc = app.cli("up", "foo")
    assert proc.returncode == 1
    assert "i-0123456789abcdef0" in proc.stderr and "not found" in proc.stderr


def test_g_sigkill_then_restart_resumes_the_idle_clock(make_app: type[App]) -> None:
    app = make_app(idle_timeout="6s", warn_before="2s")
    app.cli("up", "foo", check=True)
    pid = app.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), 5, "the daemon to die")
    assert (app.home / "run" / "daemon.sock").exists()  # stale socket left behind
    status = app.status()  # spawns a new daemon despite the stale socket
    assert app.daemon_pid() != pid
    assert status["bastion"]["state"] == "running"
    wait_until(lambda: app.instance_state() == "stopped", 6 + 5, "the resumed idle stop")


def test_10_bastion_sshd_restart_is_noticed_and_reconnected(make_app: type[App]) -> None:
    app = make_app(extra_settings={"keepalive_interval": "1s"})
    port = local_port(app.cli("connect", "foo", "db", check=True).stdout.strip())
    assert app.status()["bastion"]["ssh"] == "connected"
    assert app.status()["link_losses"] == 0
    app.sandbox.restart_bastion_sshd()
    # the loss is noticed (the reconnect may be quicker than a status call, so count it)
    wait_until(lambda: app.status()["link_losses"] == 1, 5, "the link loss to be noticed")
    conn, version = query(port, app.sandbox, connect_timeout=30)
    conn.close()
    assert "MariaDB" in version
    wait_until(lambda: app.status()["bastion"]["ssh"] == "connected", 10, "the reconnect")


def test_10_dead_peer_shows_disconnected_within_the_keepalive_window(
        make_app: type[App]) -> None:
    app = make_app(extra_settings={"keepalive_interval": "1s"})
    port = local_port(app.cli("connect", "foo", "db", check=True).stdout.strip())
    frozen = app.sandbox.freeze_bastion()  # a dead peer: TCP stays up, nothing answers
    try:
        began = time.monotonic()
        wait_until(lambda: app.status()["bastion"]["ssh"] != "connected", 8,
                   "status to stop saying 'connected'")
        assert time.monotonic() - began < 3 * 1 + 3
        assert app.status()["forwards"]["db"]["listening"] is True
    finally:
        app.sandbox.thaw_bastion(frozen)
    conn, version = query(port, app.sandbox, connect_timeout=30)
    conn.close()
    assert "MariaDB" in version


def test_10_instance_stopped_behind_our_back(make_app: type[App]) -> None:
    import boto3

    app = make_app(extra_settings={"keepalive_interval": "1s"})
    port = local_port(app.cli("connect", "foo", "db", check=True).stdout.strip())
    ec2 = boto3.client("ec2", region_name=app.sandbox.region,
                       endpoint_url=app.sandbox.endpoint_url,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    ec2.stop_instances(InstanceIds=[app.sandbox.bastion_instance_id])
    wait_until(lambda: app.status()["bastion"]["state"] == "stopped", 10,
               "status to show the instance stopped")
    conn, _ = query(port, app.sandbox, connect_timeout=30)
    conn.close()
    assert app.instance_state() == "running"


def test_shell_runs_through_the_bastion_and_passes_the_exit_code(make_app: type[App],
                                                                  tmp_path: Path) -> None:
    app = make_app()
    app.known_hosts.write_text(app.sandbox.trusted_lines("foo"))  # as `trust` records them
    opts = ["-o", "BatchMode=yes"]
    proc = app.cli("shell", "foo", "appserver", *opts, "--", "echo", "via-bastion")
    assert proc.returncode == 0, proc.stderr + app.log()
    assert proc.stdout.strip() == "via-bastion"
    assert "starting instance" in proc.stderr
    proc = app.cli("shell", "foo", "appserver", *opts, "--", "exit 3")
    assert proc.returncode == 3


def test_proxy_is_a_raw_pipe_to_the_target(make_app: type[App]) -> None:
    app = make_app()
    proc = subprocess.run(
        [sys.executable, "-m", "bastion_tray", "proxy", "foo", app.sandbox.appserver_host,
         str(app.sandbox.appserver_port)],
        input=b"SSH-2.0-probe\r\n", env=app.env, capture_output=True, timeout=60)
    assert proc.stdout.startswith(b"SSH-2.0-OpenSSH"), proc.stderr
    assert b"waiting for SSH" in proc.stderr  # progress on stderr, never on stdout


def test_keep_running_postpones_the_idle_stop(make_app: type[App]) -> None:
    app = make_app(idle_timeout="30s")
    app.cli("up", "foo", check=True)
    before = app.status()["stops_in_seconds"]
    assert before is not None and before <= 30
    app.cli("keep", "foo", "1h", check=True)
    assert app.status()["stops_in_seconds"] > 3500


def test_clean_daemon_exit_stops_the_bastion_it_started(make_app: type[App]) -> None:
    app = make_app()
    app.cli("up", "foo", check=True)
    assert app.instance_state() == "running"
    pid = app.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not alive(pid), 15, "the daemon to exit")
    assert app.instance_state() == "stopped"
    assert "daemon stopped" in app.log()
    assert not (app.home / "run" / "daemon.sock").exists()


def test_stop_closes_forwards_and_stops_now(make_app: type[App]) -> None:
    app = make_app()
    port = local_port(app.cli("connect", "foo", "db", check=True).stdout.strip())
    conn, _ = query(port, app.sandbox)
    proc = app.cli("stop", "foo", check=True)
    assert "stopped" in proc.stdout
    assert app.instance_state() == "stopped"
    status = app.status()
    assert status["forwards"]["db"]["listening"] is False
    assert status["forwards"]["db"]["active_connections"] == 0
    with pytest.raises(pymysql.err.OperationalError), conn.cursor() as cur:
        cur.execute("SELECT 1")


def without_ssh(app: App, tmp_path: Path, *, trust_appserver: bool) -> dict[str, str]:
    """app.env with a PATH that has no ssh binary (and the app server's key known or not)."""
    if trust_appserver:
        app.known_hosts.write_text(app.sandbox.trusted_lines("foo"))  # as `trust` records
    empty = tmp_path / "bin"
    empty.mkdir()
    return {**app.env, "PATH": str(empty)}


def test_shell_without_an_ssh_binary_uses_the_built_in_client(make_app: type[App],
                                                               tmp_path: Path) -> None:
    app = make_app()
    env = without_ssh(app, tmp_path, trust_appserver=True)
    proc = subprocess.run([sys.executable, "-m", "bastion_tray", "shell", "foo", "appserver",
                           "--", "echo", "built-in:$((6*7))"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + app.log()
    assert "built-in SSH client" in proc.stderr
    assert proc.stdout.strip() == "built-in:42"


def test_built_in_client_refuses_an_unknown_app_server_key(make_app: type[App],
                                                           tmp_path: Path) -> None:
    app = make_app()
    proc = subprocess.run([sys.executable, "-m", "bastion_tray", "shell", "foo", "appserver",
                           "--", "true"], env=without_ssh(app, tmp_path, trust_appserver=False),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "unknown host key" in proc.stderr


def test_built_in_client_gives_an_interactive_shell_on_a_terminal(make_app: type[App],
                                                                   tmp_path: Path) -> None:
    from tests.support.terminal import run_on_a_terminal

    app = make_app()
    code, output = run_on_a_terminal(
        [sys.executable, "-m", "bastion_tray", "shell", "foo", "appserver"],
        without_ssh(app, tmp_path, trust_appserver=True),
        [(b"#", "echo tty=$(tty | cut -c1-8) answer=$((6*7)); exit 5")])
    assert code == 5, output
    assert "answer=42" in output and "tty=/dev/pts" in output


def test_subscribe_streams_the_whole_lifecycle(make_app: type[App]) -> None:
    """What the tray sees: progress, ready, the idle warning, the stop — pushed, not polled."""
    import threading

    from bastion_tray.core.paths import app_paths
    from bastion_tray.service.control_client import ControlClient

    app = make_app(idle_timeout="5s", warn_before="3s")
    port = local_port(app.cli("connect", "foo", "db", "--lazy", check=True).stdout.strip())
    client = ControlClient.connect(app_paths({"BASTION_TRAY_HOME": str(app.home)}))
    events: list[dict[str, object]] = []
    sub = client.subscribe()
    assert sub.snapshot["profiles"]["foo"]["bastion"]["state"] == "stopped"

    def collect() -> None:
        for event in sub:
            events.append(event)
            if event.get("type") == "stopped":
                return

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    conn, _ = query(port, app.sandbox, connect_timeout=30)  # lazy: starts the bastion
    conn.close()
    reader.join(timeout=30)
    sub.close()
    client.close()
    kinds = [str(e["type"]) for e in events]
    wanted = ["progress", "ready", "warn", "stopped"]
    positions = [kinds.index(k) for k in wanted]
    assert positions == sorted(positions), kinds
    ready = events[kinds.index("ready")]
    assert isinstance(ready["seconds"], float) and ready["status"]  # type: ignore[index]
    warn = events[kinds.index("warn")]
    assert 0 < warn["stops_in"] <= 3  # type: ignore[operator]


def test_status_says_when_the_config_changed_under_the_daemon(make_app: type[App]) -> None:
    app = make_app()
    assert app.cli("status", "--json", check=True).stdout.count('"config_changed": false') == 1
    app.config.write_text(app.config.read_text() + "\n# edited\n")
    proc = app.cli("status", check=True)
    assert "changed since the daemon read it" in proc.stdout
    app.cli("shutdown", check=True)
    wait_until(lambda: '"config_changed": false' in app.cli("status", "--json").stdout, 20,
               "a fresh daemon with the new config")


def test_trust_records_only_the_confirmed_key(make_app: type[App]) -> None:
    app = make_app(trusted=False)
    with no_console_output(app.sandbox):  # only the user can confirm here
        wrong = "SHA256:" + "A" * 43
        proc = app.cli("trust", "foo", "--fingerprint", wrong)
        assert proc.returncode == 1 and "nothing was recorded" in proc.stderr
        assert not app.known_hosts.exists() or app.sandbox.bastion_host_key_line.split()[1] \
            not in app.known_hosts.read_text()
        proc = app.cli("trust", "foo")  # no terminal, no --yes: asks nobody, records nothing
        assert proc.returncode == 2 and "--yes" in proc.stderr
        right = app.sandbox.bastion_host_key_fingerprint
        app.cli("trust", "foo", "--fingerprint", right, check=True)
        assert app.sandbox.bastion_host_key_line.split()[1] in app.known_hosts.read_text()
        assert oct(app.known_hosts.stat().st_mode & 0o777) == "0o600"
