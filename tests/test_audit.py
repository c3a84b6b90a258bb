"""`bastion-tray audit` through the real CLI against moto: the sandbox's seed passes; each bad
posture (sandbox/postures.py: a VPC of its own next to the seed's, removed afterwards) fails or
warns in its own check and no other; a refused describe degrades to a warning, against a private
moto that enforces IAM; `init` prints the audit and keeps its exit code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from bastion_tray.sandbox import Sandbox, vpc
from bastion_tray.sandbox import aws as sandbox_aws
from bastion_tray.sandbox.postures import posture_vpc
from bastion_tray.sandbox.procs import ProcessSet
from tests.support.app import App
from tests.test_cloud import _set_moto_auth

pytestmark = pytest.mark.timeout(120)

#: the seed's verdicts: SSH open to the world and the EIP on the stopped bastion only warn
SEED = {"bastion-ssh-only": "pass", "bastion-ssh-world": "warn", "app-rules-expired": "pass",
        "appservers-no-world-ssh": "pass", "web-only-http": "pass", "rds-private": "pass",
        "auto-stop": "pass", "eip-stopped": "warn", "imdsv2": "pass", "bastion-small": "pass"}


def audit(app: App, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = app.cli("audit", "foo", "--json", *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return proc, json.loads(proc.stdout)


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["status"] for c in report["checks"]}


def found(report: dict[str, Any], check_id: str) -> dict[str, Any]:
    return next(c for c in report["checks"] if c["id"] == check_id)


@pytest.fixture
def seed_app(fresh_sandbox: Sandbox) -> Iterator[App]:
    app = App(fresh_sandbox, trusted=False)  # the seed's bastion, by its Name tag; stopped
    yield app
    app.close()


def test_the_seed_passes_with_its_two_warnings(seed_app: App) -> None:
    sb = seed_app.sandbox
    proc, report = audit(seed_app)
    assert proc.returncode == 0, proc.stdout
    assert report["profile"] == "foo" and report["ok"] is True
    assert report["vpc_id"] == sb.vpc.vpc_id
    assert statuses(report) == SEED
    assert report["summary"] == {"pass": 8, "warn": 2, "fail": 0}
    eip = found(report, "eip-stopped")
    assert eip["seen"] == (f"Elastic IP {sb.eip} on the stopped bastion costs $0.005/h "
                           "(~$3.60/month) while it stays stopped")
    assert sb.vpc.eip_allocation_id in eip["fix"]
    world = found(report, "bastion-ssh-world")
    assert f"tcp 22 from 0.0.0.0/0 (group ssh {sb.vpc.security_groups['ssh']})" in world["seen"]
    assert 'set ingress = "my-ip" in [profiles.foo.bastion]' in world["fix"]
    assert found(report, "rds-private")["seen"] == f"no RDS instances in {sb.vpc.vpc_id}"
    assert found(report, "imdsv2")["seen"].startswith("HttpTokens required on all 2 instance")
    assert found(report, "bastion-small")["seen"] == vpc.INSTANCE_TYPE


def test_the_human_form_has_a_line_per_check_its_fix_and_a_summary(seed_app: App) -> None:
    proc = seed_app.cli("audit", "foo")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    bastion_id = seed_app.sandbox.vpc.bastion_id
    assert lines[0].startswith(f"audit of foo: bastion foo-bastion ({bastion_id})")
    for check_id, status in SEED.items():
        assert any(line.startswith(f"{status.upper():<4}  {check_id} ") for line in lines), \
            (check_id, proc.stdout)
    eip = next(n for n, line in enumerate(lines) if line.startswith("WARN  eip-stopped"))
    assert lines[eip + 1].startswith("      fix: keep it if something allow-lists")
    assert lines[eip + 2].startswith("           aws ec2 disassociate-address --region ")
    assert lines[-1] == "foo: 8 pass, 2 warn, 0 fail"


def test_a_public_rds_that_rds_places_in_no_vpc_fails_the_seed(seed_app: App) -> None:
    """moto (like an RDS made without a subnet group) reports no VPC for it: judged anyway."""
    import boto3

    sb = seed_app.sandbox
    assert sb.endpoint_url.startswith("http://127.0.0.1:")
    rds = boto3.client("rds", region_name=sb.region, endpoint_url=sb.endpoint_url,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    rds.create_db_instance(DBInstanceIdentifier="loose-db", Engine="mysql",
                           DBInstanceClass="db.t3.micro", AllocatedStorage=20,
                           MasterUsername="admin", MasterUserPassword="not-a-secret-1",
                           PubliclyAccessible=True)
    try:
        proc, report = audit(seed_app)
        assert proc.returncode == 1, proc.stdout
        assert found(report, "rds-private")["status"] == "fail"
        assert "loose-db" in found(report, "rds-private")["seen"]
    finally:
        rds.delete_db_instance(DBInstanceIdentifier="loose-db", SkipFinalSnapshot=True)


def test_auto_stop_off_in_the_config_warns(fresh_sandbox: Sandbox) -> None:
    app = App(fresh_sandbox, trusted=False, extra_bastion={"auto_stop": False})
    try:
        proc, report = audit(app)
    finally:
        app.close()
    assert proc.returncode == 0
    assert statuses(report) == {**SEED, "auto-stop": "warn"}


BAD = [
    ("appserver-world-ssh", "appservers-no-world-ssh", "fail",
     "audit-appserver-world-ssh-appserver ({appserver}) takes SSH from 0.0.0.0/0 (group "
     "legacy-ssh sg-"),
    ("rds-public", "rds-private", "fail", "audit-public-db is publicly accessible"),
    ("bastion-extra-ingress", "bastion-ssh-only", "fail",
     "extra ingress on the bastion: tcp 3389 from 0.0.0.0/0 (group ssh {ssh})"),
    ("imdsv1", "imdsv2", "fail",
     "IMDSv1 allowed (HttpTokens optional) on audit-imdsv1-appserver ({appserver})"),
    ("web-extra-port", "web-only-http", "fail",
     "a web group opens more than 80/443: tcp 8080 from 0.0.0.0/0 (group web {web})"),
    ("large-bastion", "bastion-small", "warn", "m5.large: more than a bastion"),
    ("no-eip", "eip-stopped", "pass", "no Elastic IP on the bastion"),
    ("rds-private", "rds-private", "pass",
     "1 RDS instance(s) in {vpc}, none publicly accessible: audit-only-db"),
    ("my-ip", "bastion-ssh-world", "pass", "SSH on the bastion is open to no address range"),
]


@pytest.mark.parametrize(("kind", "check_id", "status", "seen"), BAD, ids=[b[0] for b in BAD])
def test_each_posture_shows_in_its_own_check(sandbox: Sandbox, kind: str, check_id: str,
                                             status: str, seen: str) -> None:
    with posture_vpc(sandbox.endpoint_url, kind) as bad:
        app = App(sandbox, trusted=False, extra_bastion=bad.bastion_config())
        try:
            proc, report = audit(app)
        finally:
            app.close()
    v = bad.vpc
    assert report["vpc_id"] == v.vpc_id  # that VPC, not the seed's
    check = found(report, check_id)
    assert check["status"] == status, check
    assert check["seen"].startswith(seen.format(appserver=v.appserver_id, vpc=v.vpc_id,
                                                **v.security_groups)), check
    assert (check["fix"] is None) == (status == "pass"), check
    assert statuses(report) == {**SEED, check_id: status}  # nothing else changed
    assert proc.returncode == (1 if status == "fail" else 0)


def test_a_posture_vpc_is_removed_again(sandbox: Sandbox) -> None:
    ec2 = sandbox.ec2()
    with posture_vpc(sandbox.endpoint_url, "rds-public") as bad:
        pass
    assert not ec2.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [bad.vpc.vpc_id]}])["Vpcs"]
    live = ec2.describe_instances(InstanceIds=[bad.vpc.bastion_id, bad.vpc.appserver_id])
    assert {i["State"]["Name"] for r in live["Reservations"] for i in r["Instances"]} == {
        "terminated"}
    rds = boto3.client("rds", region_name=sandbox.region, endpoint_url=sandbox.endpoint_url,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    names = {d["DBInstanceIdentifier"] for d in rds.describe_db_instances()["DBInstances"]}
    assert not names & set(bad.databases)


def test_the_fixes_make_the_fails_pass(sandbox: Sandbox) -> None:
    """What the printed commands do, done with boto3 (no aws CLI here): then the check passes."""
    rds = boto3.client("rds", region_name=sandbox.region, endpoint_url=sandbox.endpoint_url,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    ec2 = sandbox.ec2()
    with posture_vpc(sandbox.endpoint_url, "rds-public") as public, \
            posture_vpc(sandbox.endpoint_url, "bastion-extra-ingress") as extra:
        for bad, check_id in ((public, "rds-private"), (extra, "bastion-ssh-only")):
            app = App(sandbox, trusted=False, extra_bastion=bad.bastion_config())
            try:
                proc, report = audit(app)
                assert proc.returncode == 1
                fix = found(report, check_id)["fix"]
                if check_id == "rds-private":
                    assert fix == ("aws rds modify-db-instance --db-instance-identifier "
                                   "audit-public-db --no-publicly-accessible "
                                   f"--apply-immediately --region {sandbox.region}")
                    rds.modify_db_instance(DBInstanceIdentifier="audit-public-db",
                                           PubliclyAccessible=False, ApplyImmediately=True)
                else:
                    group = bad.vpc.security_groups["ssh"]
                    assert fix == (f"aws ec2 revoke-security-group-ingress --region "
                                   f"{sandbox.region} --group-id {group} --protocol tcp "
                                   "--port 3389 --cidr 0.0.0.0/0")
                    ec2.revoke_security_group_ingress(GroupId=group, IpPermissions=[{
                        "IpProtocol": "tcp", "FromPort": 3389, "ToPort": 3389,
                        "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
                proc, report = audit(app)
                assert proc.returncode == 0, report
                assert found(report, check_id)["status"] == "pass"
            finally:
                app.close()


def test_with_my_ip_configured_a_world_rule_is_said_to_defeat_it(fresh_sandbox: Sandbox) -> None:
    app = App(fresh_sandbox, trusted=False, extra_bastion={"ingress": "my-ip"})
    try:
        proc, report = audit(app)
    finally:
        app.close()
    assert proc.returncode == 0
    world = found(report, "bastion-ssh-world")
    assert world["status"] == "warn"
    assert 'ingress = "my-ip" has no effect until it is revoked' in world["seen"]


def test_a_bastion_that_does_not_exist_is_an_error_not_a_traceback(sandbox: Sandbox) -> None:
    app = App(sandbox, trusted=False,
              extra_bastion={"name": None, "instance_id": "i-0123456789abcdef0"})
    try:
        proc = app.cli("audit", "foo")
        usage = app.cli("audit", "nope")
    finally:
        app.close()
    assert proc.returncode == 1, proc.stderr
    assert "instance i-0123456789abcdef0 not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert usage.returncode == 2 and "unknown profile 'nope'" in usage.stderr


# --- refused describes, against a moto that enforces IAM ------------------------------------------

#: may read instances and addresses, not security groups, not RDS
READER_ACTIONS = ["ec2:DescribeInstances", "ec2:DescribeAddresses"]


@pytest.fixture(scope="module")
def iam_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A private moto seeded like the sandbox, a user with READER_ACTIONS, IAM enforced."""
    procs = ProcessSet()
    state = tmp_path_factory.mktemp("audit-iam-moto")
    try:
        endpoint = sandbox_aws.start_moto(procs, state)
        session = boto3.session.Session(aws_access_key_id="testing",
                                        aws_secret_access_key="testing",
                                        region_name=sandbox_aws.REGION)
        seeded = vpc.seed_vpc(session.client("ec2", endpoint_url=endpoint), lambda _: 22)
        iam = session.client("iam", endpoint_url=endpoint)
        iam.create_user(UserName="reader")
        iam.put_user_policy(UserName="reader", PolicyName="reader", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": READER_ACTIONS, "Resource": "*"}]}))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        _set_moto_auth(endpoint, "0")
        yield {"endpoint": endpoint, "vpc": seeded, "state": state,
               "key": (key["AccessKeyId"], key["SecretAccessKey"])}
    finally:
        procs.close()


@pytest.fixture
def reader_home(iam_moto: dict[str, Any]) -> Iterator[tuple[Path, dict[str, str]]]:
    home = Path(tempfile.mkdtemp(prefix="bt-", dir="/tmp"))
    env = sandbox_aws.child_env(sandbox_aws.sandbox_aws_env(iam_moto["endpoint"],
                                                            iam_moto["state"]))
    env.update(AWS_ACCESS_KEY_ID=iam_moto["key"][0], AWS_SECRET_ACCESS_KEY=iam_moto["key"][1],
               BASTION_TRAY_HOME=str(home), BASTION_TRAY_CONFIG=str(home / "config.toml"),
               BASTION_TRAY_LOOPBACK_ONLY="1")
    yield home, env
    shutil.rmtree(home, ignore_errors=True)


def test_refused_describes_degrade_to_warnings_that_name_the_permission(
        iam_moto: dict[str, Any], reader_home: tuple[Path, dict[str, str]]) -> None:
    home, env = reader_home
    (home / "config.toml").write_text(
        f'[profiles.foo]\nregion = "{sandbox_aws.REGION}"\n\n[profiles.foo.bastion]\n'
        f'instance_id = "{iam_moto["vpc"].bastion_id}"\nuser = "ec2-user"\n')
    proc = subprocess.run([sys.executable, "-m", "bastion_tray", "audit", "foo", "--json"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # warns only
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    by_id = {c["id"]: c for c in report["checks"]}
    for check_id in ("bastion-ssh-only", "bastion-ssh-world", "app-rules-expired",
                     "appservers-no-world-ssh", "web-only-http"):
        assert by_id[check_id]["status"] == "warn"
        assert by_id[check_id]["seen"] == "could not check: needs ec2:DescribeSecurityGroups"
    assert by_id["rds-private"]["seen"] == "could not check: needs rds:DescribeDBInstances"
    # what it may read it still judges
    assert by_id["imdsv2"]["status"] == "pass" and by_id["bastion-small"]["status"] == "pass"
    assert by_id["eip-stopped"]["status"] == "warn"
    assert by_id["eip-stopped"]["seen"].startswith("Elastic IP ")


def test_init_prints_the_audit_and_keeps_its_exit_code(
        iam_moto: dict[str, Any], reader_home: tuple[Path, dict[str, str]]) -> None:
    """init with credentials that may not list security groups or RDS: its notes say so, the
    audit degrades to warnings, and init succeeds."""
    home, env = reader_home
    proc = subprocess.run([sys.executable, "-m", "bastion_tray", "init", "--region",
                           sandbox_aws.REGION, "--yes", "--no-forwards"],
                          env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    assert f"wrote profile foo to {home / 'config.toml'}" in out
    audit_at = out.index("audit of foo: bastion foo-bastion")
    assert out.index("wrote profile foo") < audit_at < out.index("next:")
    assert "WARN  rds-private              could not check: needs rds:DescribeDBInstances" in out
    assert "foo: " in out and " fail" in out


def test_init_succeeds_when_the_audit_fails(sandbox: Sandbox) -> None:
    with posture_vpc(sandbox.endpoint_url, "imdsv1") as bad:
        app = App(sandbox, trusted=False)
        app.config.unlink()
        try:
            proc = app.cli("init", "--region", sandbox.region, "--yes", "--no-forwards",
                           "--no-hosts", "--bastion", bad.vpc.bastion_id, "bad", input="")
        finally:
            app.close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL  imdsv2" in proc.stdout
    assert "bad: 7 pass, 2 warn, 1 fail (imdsv2)" in proc.stdout
