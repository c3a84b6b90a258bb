"""`bastion-tray init` against the sandbox's AWS (moto's server): discovery, the written config,
adding to an existing file, the errors, and a profile that `connect` then uses. No mocks.

The backstop role's tests run init against a private moto server that enforces IAM
(test_cloud_team.auth_moto): the sandbox's IAM is shared by the whole session, and its own
bastion-tray-backstop role must stay as the sandbox made it."""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pymysql
import pytest
from botocore.exceptions import ClientError

from bastion_tray.adapters.discovery import Discovery, search_profile, ssh_sources
from bastion_tray.cli.commands.init import port_is_free
from bastion_tray.core import configwriter as cw
from bastion_tray.core.errors import ConfigError, UsageError
from bastion_tray.sandbox import Sandbox
from bastion_tray.sandbox.vpc import IMAGE_ID, INSTANCE_TYPE
from tests.support.app import App
from tests.support.console import no_console_output
from tests.test_cloud_team import AuthWorld, auth_moto

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def databases(sandbox: Sandbox) -> Iterator[dict[str, dict[str, Any]]]:
    """A MySQL and a PostgreSQL RDS instance in the sandbox's moto (fake endpoints)."""
    rds = boto3.client("rds", region_name=sandbox.region, endpoint_url=sandbox.endpoint_url,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    made = {name: rds.create_db_instance(
        DBInstanceIdentifier=name, Engine=engine, DBInstanceClass="db.t3.micro",
        AllocatedStorage=20, MasterUsername="admin", MasterUserPassword="not-a-secret-1",
    )["DBInstance"] for name, engine in (("foo-db", "mysql"), ("foo-pg", "postgres"))}
    yield made
    for name in made:  # the sandbox is shared by the whole session
        rds.delete_db_instance(DBInstanceIdentifier=name, SkipFinalSnapshot=True)


@pytest.fixture
def app(sandbox: Sandbox) -> Iterator[App]:
    """An isolated home whose config file does not exist yet."""
    app = App(sandbox, trusted=False)
    app.config.unlink()
    yield app
    app.close()


@contextlib.contextmanager
def extra_instance(sandbox: Sandbox, name: str, group: str) -> Iterator[str]:
    """One more instance in the sandbox's public subnet (never without a subnet: moto would give
    it a real-looking public address), terminated afterwards."""
    ec2 = sandbox.ec2()
    reply = ec2.run_instances(
        ImageId=IMAGE_ID, InstanceType=INSTANCE_TYPE, MinCount=1, MaxCount=1,
        SubnetId=sandbox.vpc.public_subnet_id,
        SecurityGroupIds=[sandbox.vpc.security_groups[g] for g in ("default", group)],
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}]}])
    instance_id = str(reply["Instances"][0]["InstanceId"])
    try:
        yield instance_id
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])


def init(app: App, *args: str) -> Any:
    return app.cli("init", "--region", app.sandbox.region, *args, input="")


def written(app: App) -> dict[str, Any]:
    return tomllib.loads(app.config.read_text())


def private_ip(sandbox: Sandbox, instance_id: str) -> str:
    reply = sandbox.ec2().describe_instances(InstanceIds=[instance_id])
    return str(reply["Reservations"][0]["Instances"][0]["PrivateIpAddress"])


def first_free(port: int) -> int:
    """What init should pick from `port` up, on this machine now."""
    return next(p for p in itertools.count(port) if port_is_free(p))


@contextlib.contextmanager
def occupied(port: int) -> Iterator[None]:
    """127.0.0.1:`port` taken by a listener (or already taken by someone else)."""
    with socket.socket() as sock:
        with contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            sock.listen()
        yield


def test_init_yes_writes_the_bastion_the_databases_and_the_private_host(
        app: App, databases: dict[str, dict[str, Any]]) -> None:
    sb = app.sandbox
    state = app.instance_state()
    with occupied(13306):
        expected_mysql = first_free(13307)
        proc = init(app, "--yes", "--identity-file", str(sb.client_key))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "why: Name matches *bastion*; security group ssh opens TCP 22 to 0.0.0.0/0" in out
    profile = written(app)["profiles"]["foo"]  # foo-bastion → foo
    assert profile["region"] == sb.region
    assert profile["bastion"] == {"instance_id": sb.bastion_instance_id, "user": "ec2-user",
                                  "identity_file": str(sb.client_key), "port": 22}
    forwards = profile["forwards"]
    assert forwards["foo-db"] == {
        "local_port": expected_mysql, "remote_port": 3306,
        "remote_host": databases["foo-db"]["Endpoint"]["Address"]}
    assert (forwards["foo-pg"]["local_port"], forwards["foo-pg"]["remote_port"]) == (
        first_free(15432), 5432)
    assert profile["hosts"] == {
        "appserver": {"hostname": private_ip(sb, sb.appserver_instance_id)}}
    assert "bastion-tray trust foo" in out and "bastion-tray connect foo foo-db" in out
    # --yes creates no IAM role unless asked to, and says what that leaves off
    assert "note: no backstop role (--backstop-role create|ARN)" in proc.stderr
    assert app.instance_state() == state  # --yes without --trust starts nothing
    assert (app.config.stat().st_mode & 0o777) == 0o600
    assert (app.config.parent.stat().st_mode & 0o777) == 0o700
    check = app.cli("check-config")
    assert check.returncode == 0, check.stderr
    assert "forward foo-db: 127.0.0.1:" in check.stdout


def test_two_candidates_need_a_choice_and_the_security_group_alone_makes_one(app: App) -> None:
    sb = app.sandbox
    with extra_instance(sb, "jump-host", "ssh") as jump:
        proc = init(app, "--yes", "--no-forwards")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "2 bastion candidates" in proc.stderr and "pass --bastion" in proc.stderr
        assert sb.bastion_instance_id in proc.stderr and jump in proc.stderr
        assert not app.config.exists()

        by_name = init(app, "--yes", "--no-forwards", "--bastion", "foo-bastion", "--dry-run")
        assert by_name.returncode == 0, by_name.stderr
        assert f'instance_id = "{sb.bastion_instance_id}"' in by_name.stdout
        assert "jump-host" in by_name.stdout  # the other one is a private host of the VPC

        by_id = init(app, "--yes", "--no-forwards", "--no-hosts", "--bastion", jump)
        assert by_id.returncode == 0, by_id.stderr
        assert "security group ssh opens TCP 22 to 0.0.0.0/0" in by_id.stdout
        assert written(app)["profiles"]["jump-host"]["bastion"]["instance_id"] == jump


def test_an_existing_config_is_kept_and_a_profile_is_replaced_only_with_force(
        sandbox: Sandbox) -> None:
    app = App(sandbox)  # its config has profile foo
    try:
        original = app.config.read_bytes()
        taken = written(app)["profiles"]["foo"]["forwards"]["db"]["local_port"]
        # a remote port whose first local candidate (10000 + it) is the one profile foo uses
        args = ("--yes", "--forward", f"db=10.0.0.9:{taken - 10000}")
        added = init(app, "bar", *args)
        assert added.returncode == 0, added.stderr
        text = app.config.read_bytes()
        assert text.startswith(original) and len(text) > len(original)
        assert Path(f"{app.config}.bak").read_bytes() == original
        profiles = written(app)["profiles"]
        assert set(profiles) == {"foo", "bar"}
        assert profiles["bar"]["forwards"]["db"]["local_port"] == first_free(taken + 1)
        assert app.cli("check-config").returncode == 0

        again = init(app, "bar", *args)
        assert again.returncode == 2 and "already exists" in again.stderr, again.stderr
        assert "--force" in again.stderr
        derived = init(app, "--yes")  # foo-bastion → foo, which the file has
        assert derived.returncode == 2 and "'foo' already exists" in derived.stderr
        assert app.config.read_bytes() == text

        forced = init(app, "bar", "--yes", "--force", "--no-hosts", "--no-forwards")
        assert forced.returncode == 0, forced.stderr
        replaced = app.config.read_bytes()
        assert replaced.startswith(original)
        assert Path(f"{app.config}.bak").read_bytes() == text
        bar = written(app)["profiles"]["bar"]
        assert "hosts" not in bar and "forwards" not in bar
        assert replaced.count(b"[profiles.bar]") == 1
    finally:
        app.close()


@pytest.mark.parametrize(("args", "messages"), [
    (["--region", "eu-west-3"],  # moto's eu-west-3 is empty
     ["no bastion candidate in eu-west-3 (default AWS credentials)", "*bastion*", "TCP 22"]),
    (["--aws-profile", "no-such-profile"],
     ["AWS profile 'no-such-profile' is not in the AWS config files", "or fix --aws-profile"]),
])
def test_runtime_errors_say_what_was_searched_and_what_to_do(
        app: App, args: list[str], messages: list[str]) -> None:
    proc = init(app, "--yes", *args)  # the last --region wins
    assert proc.returncode == 1, proc.stderr
    assert all(m in proc.stderr for m in messages), proc.stderr
    assert not app.config.exists()


def test_rds_errors_are_worded_for_rds() -> None:
    error = ClientError({"Error": {"Code": "Throttling", "Message": "slow down"}},
                        "DescribeDBInstances")
    translated = Discovery(search_profile("eu-west-1", None))._translate(
        error, "rds", "DescribeDBInstances")
    assert translated.message == ("RDS throttled the request to list the RDS DB instances "
                                  "(Throttling)")
    assert translated.hint is not None and "RDS API calls" in translated.hint


@pytest.mark.parametrize(("args", "message"), [
    (["--yes", "--forward", "db"], "expected NAME="),
    (["--yes", "--forward", "db=host:99999"], "not a port number"),
    (["--yes", "--port", "0"], "--port 0"),
    (["--yes", "bad name"], "profile name 'bad name'"),
    (["--yes", "--identity-file", "/no/such/key"], "no such file"),
    (["--yes", "--host", "a=10.0.0.1", "--host", "a=10.0.0.2"], "each NAME may be given once"),
    (["--yes", "--backstop-role", "yes"], "--backstop-role yes: expected create, none or an IAM "
                                          "role ARN"),
    (["--yes", "--backstop-role", "arn:aws:iam::1:role/x"], "backstop_role: expected an IAM role "
                                                           "ARN"),
    ([], "asks its questions on a terminal"),
])
def test_bad_flags_are_usage_errors(app: App, args: list[str], message: str) -> None:
    proc = init(app, *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not app.config.exists()


@pytest.mark.parametrize("stdin", ["pipe", "devnull"])
def test_dry_run_without_a_terminal_takes_the_defaults_and_asks_nothing(
        app: App, databases: dict[str, dict[str, Any]], stdin: str) -> None:
    """Issue 10: `init --dry-run </dev/null` (or in a pipe) previews what --yes would write."""
    sb = app.sandbox
    state = app.instance_state()
    argv = [sys.executable, "-m", "bastion_tray", "init", "--region", sb.region, "--dry-run",
            "--identity-file", str(sb.client_key)]
    proc = (subprocess.run(argv, env=app.env, capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL) if stdin == "devnull"
            else subprocess.run(argv, env=app.env, capture_output=True, text=True, timeout=60,
                                input="y\n" * 10))  # answers to questions that must not come
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "note: no terminal: --dry-run takes the defaults" in proc.stderr
    assert "(--dry-run: nothing was written)" in proc.stdout
    for question in ("Which one", "Profile name [", "Keep which", "[Y/n]", "[y/N]"):
        assert question not in proc.stdout + proc.stderr
    # the profile it prints is the one --yes writes: discovered from the sandbox's AWS
    printed = tomllib.loads(proc.stdout.split("profile foo for ", 1)[1].split("\n", 1)[1]
                            .split("(--dry-run", 1)[0])
    profile = printed["profiles"]["foo"]
    assert profile["bastion"]["instance_id"] == sb.bastion_instance_id
    assert set(profile["forwards"]) == {"foo-db", "foo-pg"}
    assert profile["hosts"] == {
        "appserver": {"hostname": private_ip(sb, sb.appserver_instance_id)}}
    assert "backstop_role" not in profile["bastion"]  # none, as with --yes, and said so
    assert "note: no backstop role" in proc.stderr
    assert not app.config.exists() and app.instance_state() == state


def test_dry_run_without_a_terminal_names_the_flag_for_a_choice_it_cannot_default(
        sandbox: Sandbox) -> None:
    app = App(sandbox)  # its config has profile foo: the name init would derive is taken
    try:
        before = app.config.read_bytes()
        taken = init(app, "--dry-run")
        assert taken.returncode == 2, taken.stdout + taken.stderr
        assert "profile 'foo' already exists" in taken.stderr and "--force" in taken.stderr
        with extra_instance(sandbox, "jump-host", "ssh") as jump:
            two = init(app, "bar", "--dry-run", "--no-forwards")
            assert two.returncode == 2, two.stdout + two.stderr
            assert "2 bastion candidates" in two.stderr and "pass --bastion" in two.stderr
            assert jump in two.stderr and "Which one" not in two.stdout
        assert app.config.read_bytes() == before
        # without --dry-run, a missing terminal is still an error: init would write
        write = init(app, "bar")
        assert write.returncode == 2, write.stdout + write.stderr
        assert "asks its questions on a terminal" in write.stderr
        assert "--yes" in write.stderr and "--dry-run" in write.stderr
        assert app.config.read_bytes() == before
    finally:
        app.close()


def test_init_writes_a_profile_that_connect_uses(fresh_sandbox: Sandbox) -> None:
    sb = fresh_sandbox
    app = App(sb)  # the bastion's key is in the app's known_hosts, as `trust` would leave it
    app.config.unlink()
    try:
        proc = init(app, "--yes", "--forward", f"db={sb.db_host}:{sb.db_port}",
                    "--host", "app=foo-appserver",  # a Name tag becomes the private IP
                    "--identity-file", str(sb.client_key), "--user", sb.user,
                    "--port", str(sb.bastion_port))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        profile = written(app)["profiles"]["foo"]
        assert profile["hosts"] == {"app": {"hostname": private_ip(sb, sb.appserver_instance_id)}}
        assert profile["forwards"]["db"]["remote_host"] == sb.db_host
        connect = app.cli("connect", "foo", "db", check=True)
        host, _, port = connect.stdout.strip().rpartition(":")
        assert host == "127.0.0.1"
        conn = pymysql.connect(host=host, port=int(port), user=sb.db_user,
                               password=sb.db_password, database=sb.db_name, connect_timeout=10)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        app.close()
        sb.reset()


def test_yes_with_trust_records_the_bastion_key_without_asking(fresh_sandbox: Sandbox) -> None:
    sb = fresh_sandbox
    app = App(sb, trusted=False)
    app.config.unlink()
    try:
        proc = init(app, "--yes", "--trust", "--no-forwards", "--no-hosts", "--identity-file",
                    str(sb.client_key), "--user", sb.user, "--port", str(sb.bastion_port))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert sb.bastion_host_key_fingerprint in proc.stdout + proc.stderr
        assert "recorded" in proc.stdout and "not recorded" not in proc.stdout
        assert sb.bastion_host_key_line.split()[1] in app.known_hosts.read_text()
    finally:
        app.close()
        sb.reset()


def test_init_on_a_terminal_asks_then_trusts_the_bastion(
        fresh_sandbox: Sandbox, databases: dict[str, dict[str, Any]]) -> None:
    from tests.support.terminal import run_on_a_terminal

    sb = fresh_sandbox
    app = App(sb, trusted=False)
    app.config.unlink()
    try:
        # no console output: trust asks (with it, the key is verified and nobody is asked)
        with extra_instance(sb, "jump-host", "ssh"), no_console_output(sb):
            code, output = run_on_a_terminal(
                [sys.executable, "-m", "bastion_tray", "init", "--region", sb.region,
                 "--identity-file", str(sb.client_key), "--user", sb.user,
                 "--port", str(sb.bastion_port)], app.env,
                [(b"Which one is the bastion? [1-2]", "1"),  # foo-bastion sorts first
                 (b"Profile name [foo]:", ""),
                 (b"numbers like 1 3]", ""),  # forwards: all
                 (b"numbers like 1 3]", "1"),  # hosts: foo-appserver, not jump-host
                 (f"EventBridge Scheduler can stop {sb.bastion_instance_id} when every "
                  "laptop is gone? [Y/n]".encode(), "n"),
                 (b"[Y/n]", "y"),  # write
                 (b"(starts the bastion) [y/N]", "y"),
                 (b"[y/N]", "y")])  # trust's own question, after the key it shows
        assert code == 0, output
        assert "Trust this key?" in output and sb.bastion_host_key_fingerprint in output
        assert "recorded" in output and "not recorded" not in output
        assert sb.bastion_host_key_line.split()[1] in app.known_hosts.read_text()
        profile = written(app)["profiles"]["foo"]
        assert set(profile["forwards"]) == {"foo-db", "foo-pg"}
        assert set(profile["hosts"]) == {"appserver"}
        assert "backstop_role" not in profile["bastion"]  # answered n: no role
    finally:
        app.close()
        sb.reset()


def test_what_counts_as_opening_ssh() -> None:
    rule = {"IpProtocol": "tcp", "FromPort": 20, "ToPort": 23,
            "IpRanges": [{"CidrIp": "1.2.3.4/32"}]}
    assert ssh_sources([rule]) == ["1.2.3.4/32"]
    assert ssh_sources([{**rule, "FromPort": 80, "ToPort": 80}]) == []
    assert ssh_sources([{"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}]) == ["::/0"]
    # a rule that admits only another group marks a host reached *from* a bastion
    assert ssh_sources([{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                         "UserIdGroupPairs": [{"GroupId": "sg-1"}]}]) == []


@pytest.mark.parametrize(("tag", "name"), [
    ("foo-bastion", "foo"), ("bastion-prod", "prod"), ("Bastion", "default"), (None, "default"),
    ("my bastion host", "my-host"), ("jump", "jump"), ("--", "default")])
def test_profile_names_from_the_name_tag(tag: str | None, name: str) -> None:
    assert cw.profile_name_for(tag) == name


def test_local_ports_by_engine() -> None:
    assert cw.local_port_base("aurora-mysql", 3306) == 13306
    assert cw.local_port_base("aurora-postgresql", 5432) == 15432
    assert cw.local_port_base("sqlserver-ex", 1433) == 11433
    assert cw.local_port_base(None, 5432) == 15432
    assert cw.choose_local_port(13306, {13307}, lambda p: p != 13306) == 13308


@pytest.mark.parametrize(("value", "spec"), [
    ("db=foo-db", cw.TargetSpec("db", "foo-db", None, None)),
    ("db=h.example:3306", cw.TargetSpec("db", "h.example", 3306, None)),
    ("db=13310:foo-db", cw.TargetSpec("db", "foo-db", None, 13310)),
    ("db=13310:10.0.0.5:5432", cw.TargetSpec("db", "10.0.0.5", 5432, 13310)),
    ("db=[::1]:5432", cw.TargetSpec("db", "::1", 5432, None)),
])
def test_forward_specs(value: str, spec: cw.TargetSpec) -> None:
    assert cw.parse_target_spec("--forward", value, local=True) == spec


def test_a_forced_profile_is_replaced_in_place_and_oddly_written_ones_are_refused() -> None:
    plan = cw.ProfilePlan("foo", "r", None, cw.BastionPlan("i-0123456789abcdef0", "u", 22, None))
    text = ('# mine\n[settings]\nidle_timeout = "1h"\n\n[profiles.foo]\nregion = "x"\n\n'
            '[profiles.foo.bastion]\nname = "n"\n\n# the next one\n[profiles.bar]\nregion = "y"\n'
            '[profiles.bar.bastion]\nname = "b"\n')
    replaced = cw.add_profile_text(text, plan, replace=True)
    assert replaced.startswith('# mine\n[settings]\nidle_timeout = "1h"\n\n[profiles.foo]')
    assert "# the next one\n[profiles.bar]" in replaced and 'name = "n"' not in replaced
    assert tomllib.loads(replaced)["profiles"]["foo"]["bastion"]["port"] == 22
    dotted = '[profiles]\nfoo.region = "x"\n[profiles.foo.bastion]\nname = "n"\n'
    with pytest.raises(ConfigError, match="cannot replace profile 'foo' automatically"):
        cw.add_profile_text(dotted, plan, replace=True)
    with pytest.raises(UsageError):
        cw.parse_target_spec("--host", "a=b c", local=False)


@pytest.mark.parametrize(("tag", "bastion", "expected"), [
    ("foo-appserver", "foo-bastion", "appserver"),
    ("foo-appserver", "bastion-prod", "foo-appserver"),
    ("foo-", "foo-bastion", "foo"),
    ("web server", None, "web-server"),
])
def test_host_names_drop_the_profile_prefix(tag: str, bastion: str | None,
                                            expected: str) -> None:
    from bastion_tray.core.configwriter import host_name_for

    assert host_name_for(tag, bastion) == expected


# --- the backstop role --------------------------------------------------------------------------

REGION = "ap-northeast-1"
ROLE_ARN = "arn:aws:iam::123456789012:role/bastion-tray-backstop"  # moto's account


def test_a_given_backstop_role_is_written_as_it_is(app: App) -> None:
    arn = "arn:aws:iam::123456789012:role/team/backstop"
    proc = init(app, "--yes", "--no-forwards", "--no-hosts", "--backstop-role", arn)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert written(app)["profiles"]["foo"]["bastion"]["backstop_role"] == arn
    assert "no backstop role" not in proc.stderr and "IAM role" not in proc.stdout
    assert app.cli("check-config").returncode == 0


@pytest.fixture
def iam_world(sandbox: Sandbox, tmp_path: Path) -> Iterator[tuple[AuthWorld, App]]:
    """A private moto enforcing IAM with one bastion candidate (team-bastion), and an app whose
    AWS is that moto; fresh per test, so a role one test creates is not there for the next."""
    app = App(sandbox, trusted=False)
    app.config.unlink()
    try:
        with auth_moto(tmp_path / "moto", "team-bastion") as world:
            yield world, app
    finally:
        app.close()


def as_user(world: AuthWorld, app: App, user: str) -> App:
    app.env.update(world.env(user, app.home))
    return app


def role_facts(world: AuthWorld, name: str = "bastion-tray-backstop") -> dict[str, Any]:
    """The role as IAM has it: its trust policy and its inline policies (as the admin)."""
    session = boto3.session.Session(*world.keys["admin"], region_name=REGION)
    iam = session.client("iam", endpoint_url=world.endpoint)
    policies = iam.list_role_policies(RoleName=name)["PolicyNames"]
    return {"arn": iam.get_role(RoleName=name)["Role"]["Arn"],
            "trust": iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"],
            "policies": {p: iam.get_role_policy(RoleName=name, PolicyName=p)["PolicyDocument"]
                         for p in policies}}


def test_backstop_role_create_makes_the_role_writes_it_and_a_rerun_reuses_it(
        iam_world: tuple[AuthWorld, App]) -> None:
    world, app = iam_world
    as_user(world, app, "admin")
    instance = f"arn:aws:ec2:{REGION}:123456789012:instance/{world.instance_id}"

    dry = init(app, "--yes", "--backstop-role", "create", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "(--dry-run: the IAM role bastion-tray-backstop is not created)" in dry.stdout
    assert "backstop_role" not in dry.stdout and not app.config.exists()

    proc = init(app, "--yes", "--backstop-role", "create")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (f"created IAM role bastion-tray-backstop\n  ARN: {ROLE_ARN}\n  trusted by: "
            "scheduler.amazonaws.com, for schedules of account 123456789012\n  its one "
            f"permission: ec2:StopInstances on {instance} (inline policy "
            f"bastion-tray-stop-{world.instance_id})") in proc.stdout
    assert written(app)["profiles"]["team"]["bastion"]["backstop_role"] == ROLE_ARN
    facts = role_facts(world)
    assert facts["trust"]["Statement"] == [{
        "Effect": "Allow", "Principal": {"Service": "scheduler.amazonaws.com"},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": "123456789012"}}}]
    assert facts["policies"] == {f"bastion-tray-stop-{world.instance_id}": {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "ec2:StopInstances", "Resource": instance}]}}
    assert app.cli("check-config").returncode == 0

    again = init(app, "team2", "--yes", "--backstop-role", "create")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "reusing IAM role bastion-tray-backstop\n" in again.stdout
    assert "(its trust policy checked)" in again.stdout
    assert written(app)["profiles"]["team2"]["bastion"]["backstop_role"] == ROLE_ARN
    assert role_facts(world) == facts  # the same role, still its one permission


def test_without_iam_permissions_init_writes_the_profile_and_says_what_to_ask_for(
        iam_world: tuple[AuthWorld, App]) -> None:
    world, app = iam_world
    as_user(world, app, "reader")
    proc = init(app, "--yes", "--backstop-role", "create")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    err = proc.stderr
    assert ("note: no backstop role was created: not allowed to create IAM roles "
            "(iam:CreateRole, iam:PutRolePolicy) in ap-northeast-1") in err
    assert "→ ask an administrator to create it, see the README's IAM section" in err
    instance = f"arn:aws:ec2:{REGION}:123456789012:instance/{world.instance_id}"
    documents = [json.loads(line.strip()) for line in err.splitlines()
                 if line.strip().startswith("{")]
    assert documents == [
        {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": "scheduler.amazonaws.com"},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"aws:SourceAccount": "123456789012"}}}]},
        {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "ec2:StopInstances", "Resource": instance}]}]
    assert f'[profiles.team.bastion]: backstop_role = "{ROLE_ARN}"' in err
    assert "the backstop is off" in err
    bastion = written(app)["profiles"]["team"]["bastion"]
    assert bastion["instance_id"] == world.instance_id and "backstop_role" not in bastion
    with pytest.raises(ClientError, match="NoSuchEntity"):  # no role, not even half of one
        role_facts(world)


def test_init_on_a_terminal_offers_the_role_and_creates_it_by_default(
        iam_world: tuple[AuthWorld, App]) -> None:
    from tests.support.terminal import run_on_a_terminal

    world, app = iam_world
    as_user(world, app, "admin")
    code, output = run_on_a_terminal(
        [sys.executable, "-m", "bastion_tray", "init", "--region", REGION, "--no-forwards",
         "--no-hosts"], app.env,
        [(b"Profile name [team]:", ""),
         (f"Create an IAM role so EventBridge Scheduler can stop {world.instance_id} when "
          "every laptop is gone? [Y/n]".encode(), ""),  # Enter: the default, yes
         (b"[Y/n]", "y"),  # write
         (b"(starts the bastion) [y/N]", "n")])
    assert code == 0, output
    assert "created IAM role bastion-tray-backstop" in output
    assert written(app)["profiles"]["team"]["bastion"]["backstop_role"] == ROLE_ARN
    assert role_facts(world)["arn"] == ROLE_ARN
