"""The sandbox VPC against its real peers: moto's server, OpenSSH sshd, MariaDB. No mocks."""

from __future__ import annotations

import grp
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import boto3
import pymysql
import pytest

from bastion_tray.core.errors import LoopbackViolation
from bastion_tray.sandbox import Sandbox
from bastion_tray.sandbox.mariadb import GREETING
from bastion_tray.sandbox.procs import descendants, is_alive

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
pytestmark = pytest.mark.timeout(60)


def ec2_from_env(env: dict[str, str]) -> Any:
    """A boto3 client built only from what sb.env says, as a daemon would get it."""
    session = boto3.session.Session(aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                    aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                                    region_name=env["AWS_REGION"])
    return session.client("ec2", endpoint_url=env["AWS_ENDPOINT_URL"])


def describe(sb: Sandbox, instance_id: str) -> dict[str, Any]:
    reply = ec2_from_env(sb.env).describe_instances(InstanceIds=[instance_id])
    return reply["Reservations"][0]["Instances"][0]


def ssh_config(sb: Sandbox, path: Path) -> Path:
    """`ssh -J` hands the jump host only -F (not -i or -o), so the options live in a file."""
    path.write_text(
        "Host *\n"
        f"  User {sb.user}\n"
        f"  IdentityFile {sb.client_key}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {sb.known_hosts}\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
        "  BatchMode yes\n"
        "  ConnectTimeout 5\n")
    return path


def bastion_ssh(sb: Sandbox, cfg: Path, *args: str) -> list[str]:
    return ["ssh", "-F", str(cfg), "-p", str(sb.bastion_port), *args, sb.eip]


def start_bastion(sb: Sandbox) -> None:
    ec2_from_env(sb.env).start_instances(InstanceIds=[sb.bastion_instance_id])
    sb.wait_bastion_ssh(True, sb.boot_delay + 5)


def test_loopback_guard_refuses_a_non_loopback_connect() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        with pytest.raises(LoopbackViolation, match=r"10\.255\.255\.1"):
            sock.connect(("10.255.255.1", 9))


def test_every_address_is_loopback_and_the_vpc_is_shaped_like_production(sandbox: Sandbox) -> None:
    sb = sandbox
    for host in (sb.eip, sb.bastion_host, sb.appserver_host, sb.db_host):
        assert ipaddress.ip_address(host) in LOOPBACK, host
    assert len({sb.eip, sb.appserver_host, sb.db_host}) == 3
    assert sb.env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")

    bastion = describe(sb, sb.bastion_instance_id)
    assert bastion["SubnetId"] == sb.vpc.public_subnet_id
    assert {g["GroupName"] for g in bastion["SecurityGroups"]} == {"default", "ssh"}
    assert {t["Key"]: t["Value"] for t in bastion["Tags"]}["Name"] == "foo-bastion"
    assert bastion["PublicIpAddress"] == sb.eip
    addresses = ec2_from_env(sb.env).describe_addresses(PublicIps=[sb.eip])["Addresses"]
    assert addresses[0]["InstanceId"] == sb.bastion_instance_id

    app = describe(sb, sb.appserver_instance_id)
    assert app["SubnetId"] == sb.vpc.private_subnet_id
    assert {g["GroupName"] for g in app["SecurityGroups"]} == {"default", "web"}
    assert app["State"]["Name"] == "running"
    assert "PublicIpAddress" not in app or not app["PublicIpAddress"]


def test_env_alone_sends_boto3_to_the_sandbox(sandbox: Sandbox) -> None:
    # a developer's profile or EC2 endpoint override in the environment must not leak in. The
    # override is a loopback port where nothing listens: the plain boto3 child has no loopback
    # guard, so a leak must fail here (connection refused), never dial a real address
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nothing_there = f"http://127.0.0.1:{closed.getsockname()[1]}"
    base = {**os.environ, "AWS_PROFILE": "someone-real", "AWS_ENDPOINT_URL_EC2": nothing_there}
    script = ("import boto3; r = boto3.client('ec2').describe_instances("
              "Filters=[{'Name': 'tag:Name', 'Values': ['foo-bastion']}]); "
              "print(r['Reservations'][0]['Instances'][0]['InstanceId'])")
    out = subprocess.run([sys.executable, "-c", script], env=sandbox.child_env(base),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == sandbox.bastion_instance_id


def test_bastion_ssh_follows_the_instance_with_a_boot_delay(fresh_sandbox: Sandbox) -> None:
    sb = fresh_sandbox
    ec2 = ec2_from_env(sb.env)
    assert describe(sb, sb.bastion_instance_id)["State"]["Name"] == "stopped"
    assert not sb.bastion_ssh_up()

    started = time.monotonic()
    ec2.start_instances(InstanceIds=[sb.bastion_instance_id])
    while time.monotonic() - started < sb.boot_delay / 2:
        assert not sb.bastion_ssh_up(), "sshd answered before the boot delay"
        time.sleep(0.1)
    sb.wait_bastion_ssh(True, sb.boot_delay + 2)
    assert time.monotonic() - started >= sb.boot_delay

    stopped = time.monotonic()
    ec2.stop_instances(InstanceIds=[sb.bastion_instance_id])
    sb.wait_bastion_ssh(False, 3)
    assert time.monotonic() - stopped < 1.5


def test_stopping_the_instance_drops_open_sessions(fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = fresh_sandbox
    start_bastion(sb)
    cfg = ssh_config(sb, tmp_path / "ssh_config")
    session = subprocess.Popen([*bastion_ssh(sb, cfg), "echo ready; sleep 60"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert session.stdout is not None and session.stdout.readline().strip() == "ready"
        ec2_from_env(sb.env).stop_instances(InstanceIds=[sb.bastion_instance_id])
        assert session.wait(timeout=3) == 255  # ssh's "connection lost"
    finally:
        session.kill()
        session.wait()


def test_restart_bastion_sshd_keeps_the_instance_running(fresh_sandbox: Sandbox,
                                                         tmp_path: Path) -> None:
    sb = fresh_sandbox
    start_bastion(sb)
    cfg = ssh_config(sb, tmp_path / "ssh_config")
    sb.restart_bastion_sshd()
    assert describe(sb, sb.bastion_instance_id)["State"]["Name"] == "running"
    out = subprocess.run([*bastion_ssh(sb, cfg), "echo again"], capture_output=True,
                         text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "again"


def test_mariadb_answers_over_tcp(sandbox: Sandbox) -> None:
    conn = pymysql.connect(host=sandbox.db_host, port=sandbox.db_port, user=sandbox.db_user,
                           password=sandbox.db_password, database=sandbox.db_name,
                           connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT message FROM greetings WHERE id = 1")
            assert cur.fetchone() == (GREETING,)
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone() == (f"{sandbox.db_user}@%",)
    finally:
        conn.close()


def test_appserver_is_reached_through_the_bastion_with_ssh_jump(fresh_sandbox: Sandbox,
                                                                tmp_path: Path) -> None:
    sb = fresh_sandbox
    start_bastion(sb)
    cfg = ssh_config(sb, tmp_path / "ssh_config")
    jump = ["ssh", "-F", str(cfg), "-J", f"{sb.user}@{sb.eip}:{sb.bastion_port}",
            "-p", str(sb.appserver_port), sb.appserver_host, "echo appserver says hi; hostname"]
    out = subprocess.run(jump, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["appserver says hi", socket.gethostname()]

    # the same command fails once the bastion is gone: the path really went through it
    sb.reset()
    out = subprocess.run(jump, capture_output=True, text=True, timeout=30)
    assert out.returncode == 255


def test_commands_on_the_bastion_hit_the_stubs(fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = fresh_sandbox
    start_bastion(sb)
    cfg = ssh_config(sb, tmp_path / "ssh_config")
    before = len(sb.stub_calls())
    out = subprocess.run([*bastion_ssh(sb, cfg), "command -v shutdown; sudo reboot now"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [str(sb.stub_dir / "shutdown"), "sandbox stub: sudo not run"]
    assert sb.stub_calls()[before:] == ["sudo reboot now"]
    assert describe(sb, sb.bastion_instance_id)["State"]["Name"] == "running"


def test_scp_works_under_the_forced_command(fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = fresh_sandbox
    start_bastion(sb)
    cfg = ssh_config(sb, tmp_path / "ssh_config")
    source = tmp_path / "payload.txt"
    source.write_text("carried by sftp-server\n")
    copy = tmp_path / "copy.txt"
    target = f"{sb.user}@{sb.eip}"
    for args in ([str(source), f"{target}:{tmp_path / 'remote.txt'}"],
                 [f"{target}:{tmp_path / 'remote.txt'}", str(copy)]):
        out = subprocess.run(["scp", "-F", str(cfg), "-P", str(sb.bastion_port), *args],
                             capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
    assert copy.read_text() == "carried by sftp-server\n"


def test_write_config_round_trips_through_tomllib(sandbox: Sandbox, tmp_path: Path) -> None:
    path = sandbox.write_config(
        tmp_path / "config.toml", idle_timeout="90s",
        extra_bastion={"host_key": sandbox.bastion_host_key_fingerprint, "auto_stop": False},
        extra_settings={"terminal": ["xterm", "-e", 'say "hi"\\now']})
    data = tomllib.loads(path.read_text())
    assert data["settings"] == {"idle_timeout": "90s", "warn_before": "2m",
                                "terminal": ["xterm", "-e", 'say "hi"\\now']}
    profile = data["profiles"]["foo"]
    assert profile["region"] == "ap-northeast-1"
    assert profile["bastion"] == {
        "name": "foo-bastion", "user": sandbox.user, "identity_file": str(sandbox.client_key),
        "host": "auto", "port": sandbox.bastion_port,
        "host_key": sandbox.bastion_host_key_fingerprint, "auto_stop": False}
    assert profile["hosts"]["appserver"] == {
        "hostname": sandbox.appserver_host, "port": sandbox.appserver_port,
        "user": sandbox.user, "identity_file": str(sandbox.client_key)}
    forward = profile["forwards"]["db"]
    assert (forward["remote_host"], forward["remote_port"]) == (sandbox.db_host, sandbox.db_port)
    assert forward["local_port"] == sandbox.db_forward_port != 13306


def _ptys_work_for_sshd() -> bool:
    """Non-root sshd can hand out a pty only where devpts gives new ptys the tty group."""
    if os.geteuid() == 0:
        return True
    leader, follower = os.openpty()
    try:
        return os.fstat(follower).st_gid == grp.getgrnam("tty").gr_gid
    finally:
        os.close(leader)
        os.close(follower)


def test_interactive_session_on_the_bastion_finds_the_stubs(fresh_sandbox: Sandbox,
                                                            tmp_path: Path) -> None:
    if not _ptys_work_for_sshd():
        pytest.skip("devpts here is mounted without gid=5: a non-root sshd cannot chown ptys")
    sb = fresh_sandbox
    start_bastion(sb)
    cfg = ssh_config(sb, tmp_path / "ssh_config")
    out = subprocess.run([*bastion_ssh(sb, cfg, "-tt")], input="command -v shutdown; exit\n",
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    printed = [line.strip() for line in out.stdout.splitlines()]
    assert str(sb.stub_dir / "shutdown") in printed


def _children_of_this_process() -> set[int]:
    me = str(os.getpid())
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] not in {"Z", "X"}:
                found.add(int(entry.name))
    return found


@pytest.mark.timeout(90)
def test_close_leaves_no_process_behind(tmp_path: Path) -> None:
    with Sandbox.start(tmp_path / "second", boot_delay=0.2) as sb:
        start_bastion(sb)
        cfg = ssh_config(sb, tmp_path / "ssh_config")
        session = subprocess.Popen([*bastion_ssh(sb, cfg), "echo ready; sleep 60"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert session.stdout is not None and session.stdout.readline().strip() == "ready"
        pids = set(sb.pids().values())
        assert {name.split(":")[0] for name in sb.pids()} == {
            "moto", "sshd-appserver", "mariadbd", "sshd-bastion"}
        for pid in list(pids):
            pids.update(descendants(pid))  # the session's sshd, shell and sleep
        assert sb.watcher_thread_alive
    try:
        assert not sb.watcher_thread_alive
        assert sb.pids() == {}
        assert [pid for pid in pids if is_alive(pid)] == []
        assert session.wait(timeout=5) == 255
    finally:
        session.kill()
        session.wait()


_EXIT_WITHOUT_CLOSE = """
import json, sys
from pathlib import Path
from bastion_tray.sandbox import Sandbox
sb = Sandbox.start(Path(sys.argv[1]))
print(json.dumps(sorted(sb.pids().values())), flush=True)
"""


@pytest.mark.timeout(90)
def test_interpreter_exit_without_close_leaves_no_process_behind(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parents[1])
    paths = [root, *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    out = subprocess.run([sys.executable, "-c", _EXIT_WITHOUT_CLOSE, str(tmp_path / "leaky")],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    pids = json.loads(out.stdout.splitlines()[-1])
    assert len(pids) == 3  # moto, the app server's sshd, mariadbd
    assert [pid for pid in pids if is_alive(pid)] == []


def test_a_start_that_fails_halfway_leaves_no_process_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _children_of_this_process()
    running_at_failure: set[int] = set()

    def broken_step(*args: object, **kwargs: object) -> None:
        running_at_failure.update(_children_of_this_process() - before)
        raise RuntimeError("injected: the last step of the start failed")

    # the step after moto, the app server's sshd and mariadbd are all up
    monkeypatch.setattr("bastion_tray.sandbox.sandbox.Sandbox._write_known_hosts", broken_step)
    with pytest.raises(RuntimeError, match="injected"):
        Sandbox.start(tmp_path / "broken")
    assert len(running_at_failure) == 3
    assert _children_of_this_process() - before == set()
