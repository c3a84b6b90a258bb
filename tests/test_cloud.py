"""The EC2 adapter against a real local AWS endpoint (moto's server on 127.0.0.1), no boto3 mocks.

Most tests use the session `sandbox` and act only on instances they launch themselves in its
public subnet (the sandbox's bastion is only read), so the sandbox's own bastion lifecycle is
undisturbed. The IAM test runs a private moto server: moto's IAM enforcement is a server-wide
switch that would also lock out the sandbox's watcher. The translation of errors moto cannot
produce (expired tokens, IncorrectInstanceState, …) is tested with hand-built botocore errors.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import boto3
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
    SSOTokenLoadError,
    TokenRetrievalError,
    UnauthorizedSSOTokenError,
)

from bastion_tray.adapters.cloud import ApiLimits, Ec2Cloud, default_session, uses_sso
from bastion_tray.adapters.cloud_errors import translate
from bastion_tray.core.config import BastionConfig, Profile, load_config
from bastion_tray.core.errors import CloudError, CredentialsError
from bastion_tray.core.netguard import is_loopback
from bastion_tray.sandbox import Sandbox
from bastion_tray.sandbox import aws as sandbox_aws
from bastion_tray.sandbox.procs import ProcessSet

REGION = "ap-northeast-1"
IMAGE_ID = "ami-12c6146b"  # one of moto's built-in AMIs


def make_profile(*, instance_id: str | None = None, name: str | None = None,
                 aws_profile: str | None = None, region: str = REGION) -> Profile:
    return Profile(name="foo", region=region, aws_profile=aws_profile,
                   bastion=BastionConfig(instance_id=instance_id, name=name, user="ec2-user",
                                         identity_file=None))


def use_aws_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Only `env`'s AWS settings: nothing of the developer's own AWS_* leaks in."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def aws_env(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    use_aws_env(monkeypatch, sandbox.env)
    return sandbox


# --- instances of our own, in the sandbox's subnet ---------------------------------------------


@dataclass
class Launcher:
    """Launches tagged instances in a subnet (never without one: that gives a 54.x address)."""

    ec2: Any
    subnet_id: str
    launched: list[str] = field(default_factory=list)
    allocations: list[str] = field(default_factory=list)

    def __call__(self, name: str, *, eip: bool = False, stopped: bool = False) -> str:
        reply = self.ec2.run_instances(
            ImageId=IMAGE_ID, InstanceType="t3.micro", MinCount=1, MaxCount=1,
            SubnetId=self.subnet_id,
            TagSpecifications=[{"ResourceType": "instance",
                                "Tags": [{"Key": "Name", "Value": name}]}])
        instance_id = str(reply["Instances"][0]["InstanceId"])
        self.launched.append(instance_id)
        if eip:
            self.associate_eip(instance_id)
        if stopped:
            self.ec2.stop_instances(InstanceIds=[instance_id])
        return instance_id

    def associate_eip(self, instance_id: str) -> str:
        address = self.ec2.allocate_address(Domain="vpc")
        self.allocations.append(address["AllocationId"])
        assert is_loopback(address["PublicIp"]), f"moto gave a non-loopback EIP {address}"
        self.ec2.associate_address(InstanceId=instance_id, AllocationId=address["AllocationId"])
        return str(address["PublicIp"])

    def state(self, instance_id: str) -> str:
        return sandbox_aws.instance_state(self.ec2, instance_id)

    def cleanup(self) -> None:
        for allocation in self.allocations:
            self.ec2.release_address(AllocationId=allocation)
        if self.launched:
            self.ec2.terminate_instances(InstanceIds=self.launched)


@pytest.fixture(scope="module")
def launch(sandbox: Sandbox) -> Iterator[Launcher]:
    launcher = Launcher(sandbox.ec2(), sandbox.vpc.public_subnet_id)
    yield launcher
    launcher.cleanup()


def unique_name(what: str) -> str:
    return f"cloud-test-{what}-{uuid.uuid4().hex[:8]}"


# --- describe ----------------------------------------------------------------------------------


def test_describe_sandbox_bastion_by_id_reports_its_elastic_ip(aws_env: Sandbox) -> None:
    cloud = Ec2Cloud(make_profile(instance_id=aws_env.bastion_instance_id))
    info = cloud.describe()
    assert info.instance_id == aws_env.bastion_instance_id
    assert info.state == aws_env.instance_state()
    assert info.name == "foo-bastion"
    assert info.elastic_ip == aws_env.eip and is_loopback(aws_env.eip)
    assert info.address == aws_env.eip


def test_describe_by_name_from_the_sandbox_config_resolves_the_bastion(
        aws_env: Sandbox, tmp_path: Path) -> None:
    profile = load_config(aws_env.write_config(tmp_path / "config.toml")).profile("foo")
    assert profile.bastion.instance_id is None and profile.bastion.name == "foo-bastion"
    cloud = Ec2Cloud(profile)
    assert cloud.instance_id is None
    info = cloud.describe()
    assert info.instance_id == cloud.instance_id == aws_env.bastion_instance_id
    assert info.address == aws_env.eip


def test_describe_by_id_and_by_name_in_both_states(aws_env: Sandbox, launch: Launcher) -> None:
    name = unique_name("states")
    instance_id = launch(name)
    by_id = Ec2Cloud(make_profile(instance_id=instance_id))
    by_name = Ec2Cloud(make_profile(name=name))
    for state in ("running", "stopped"):
        if state == "stopped":
            launch.ec2.stop_instances(InstanceIds=[instance_id])
        for cloud in (by_id, by_name):
            info = cloud.describe()
            assert (info.instance_id, info.state, info.name) == (instance_id, state, name)
            # launched in a subnet without public IPs and no EIP: no address at all
            assert info.public_ip is None and info.elastic_ip is None and info.address is None


def test_elastic_ip_is_reported_and_equals_the_public_ip(aws_env: Sandbox,
                                                          launch: Launcher) -> None:
    instance_id = launch(unique_name("eip"))
    eip = launch.associate_eip(instance_id)
    info = Ec2Cloud(make_profile(instance_id=instance_id)).describe()
    assert info.elastic_ip == eip
    assert info.public_ip == eip  # EC2 reports an associated EIP as the public IP too
    assert info.address == eip and is_loopback(eip)


def test_name_matching_two_instances_lists_both(aws_env: Sandbox, launch: Launcher) -> None:
    name = unique_name("twins")
    running, stopped = launch(name), launch(name, stopped=True)
    with pytest.raises(CloudError) as caught:
        Ec2Cloud(make_profile(name=name)).describe()
    error = caught.value
    assert f"2 instances are tagged Name={name}" in error.message
    assert f"{running} (running)" in error.message and f"{stopped} (stopped)" in error.message
    assert error.hint is not None and "instance_id" in error.hint


def test_resolved_name_stays_on_its_instance_when_a_twin_appears(
        aws_env: Sandbox, launch: Launcher) -> None:
    name = unique_name("cached")
    first = launch(name)
    cloud = Ec2Cloud(make_profile(name=name))
    assert cloud.describe().instance_id == first
    launch(name)  # now the Name is ambiguous, but this adapter already knows its instance
    assert cloud.describe().instance_id == first
    assert cloud.instance_id == first


def test_no_instance_with_that_name(aws_env: Sandbox, launch: Launcher) -> None:
    name = unique_name("gone")
    launch.ec2.terminate_instances(InstanceIds=[launch(name)])  # terminated ones do not count
    with pytest.raises(CloudError) as caught:
        Ec2Cloud(make_profile(name=name)).start()
    assert str(caught.value).startswith(
        f"no instance tagged Name={name} in ap-northeast-1 (default AWS credentials)")


def test_unknown_instance_id_is_reported_with_region_and_profile(aws_env: Sandbox) -> None:
    cloud = Ec2Cloud(make_profile(instance_id="i-0123456789abcdef0"))
    for call in (cloud.describe, cloud.start, cloud.stop):
        with pytest.raises(CloudError) as caught:
            call()
        error = caught.value
        assert type(error) is CloudError
        assert error.message.startswith("instance i-0123456789abcdef0 not found in region "
                                        "ap-northeast-1 (default AWS credentials)")
        assert "InvalidInstanceID.NotFound" in error.message
        assert error.hint is not None and "instance_id" in error.hint and "region" in error.hint


# --- start / stop ------------------------------------------------------------------------------


def test_start_and_stop_change_the_state_and_touch_no_other_instance(
        aws_env: Sandbox, launch: Launcher) -> None:
    name = unique_name("cycle")
    target, bystander = launch(name, stopped=True), launch(unique_name("bystander"))
    bastion_before = aws_env.instance_state()
    cloud = Ec2Cloud(make_profile(name=name))

    cloud.start()
    assert cloud.describe().state == "running"
    cloud.stop()
    assert cloud.describe().state == "stopped"

    assert cloud.instance_id == target
    assert launch.state(bystander) == "running"
    assert aws_env.instance_state() == bastion_before


# --- credentials -------------------------------------------------------------------------------


@pytest.fixture
def aws_home(aws_env: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty AWS config and credentials files, no key in the environment, a fresh HOME."""
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    for name, var in (("config", "AWS_CONFIG_FILE"),
                      ("credentials", "AWS_SHARED_CREDENTIALS_FILE")):
        (home / ".aws" / name).write_text("")
        monkeypatch.setenv(var, str(home / ".aws" / name))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("HOME", str(home))  # the SSO token cache lives under ~/.aws/sso/cache
    return home


def test_no_credentials_then_configured_ones_are_used_without_a_restart(
        aws_home: Path, aws_env: Sandbox) -> None:
    cloud = Ec2Cloud(make_profile(instance_id=aws_env.bastion_instance_id))
    with pytest.raises(CredentialsError) as caught:
        cloud.describe()
    assert "no AWS credentials were found" in caught.value.message
    assert caught.value.hint == ("configure credentials: aws configure --profile default, "
                                 "or set AWS_PROFILE")
    # the failed client held no credentials; the adapter must not keep it
    (aws_home / ".aws" / "credentials").write_text(
        "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    assert cloud.describe().instance_id == aws_env.bastion_instance_id


@pytest.mark.parametrize("config", [
    "[profile ssoprof]\nsso_start_url = https://example.awsapps.com/start\n"
    "sso_region = ap-northeast-1\nsso_account_id = 123456789012\nsso_role_name = Bastion\n",
    "[profile ssoprof]\nsso_session = corp\nsso_account_id = 123456789012\n"
    "sso_role_name = Bastion\n\n[sso-session corp]\n"
    "sso_start_url = https://example.awsapps.com/start\nsso_region = ap-northeast-1\n",
], ids=["legacy-sso", "sso-session"])
def test_sso_profile_without_a_login_says_aws_sso_login(aws_home: Path, aws_env: Sandbox,
                                                        config: str) -> None:
    (aws_home / ".aws" / "config").write_text(config)
    cloud = Ec2Cloud(make_profile(instance_id=aws_env.bastion_instance_id,
                                  aws_profile="ssoprof"))
    with pytest.raises(CredentialsError) as caught:
        cloud.describe()
    assert caught.value.hint == "run: aws sso login --profile ssoprof"
    assert "(AWS profile ssoprof)" in caught.value.message


def test_uses_sso_reads_the_profile_config(aws_home: Path) -> None:
    (aws_home / ".aws" / "config").write_text(
        "[profile legacy]\nsso_start_url = https://example.awsapps.com/start\n"
        "[profile modern]\nsso_session = corp\n"
        "[sso-session corp]\nsso_start_url = https://example.awsapps.com/start\n"
        "[profile keys]\nregion = ap-northeast-1\n")
    assert uses_sso(boto3.session.Session(profile_name="legacy"))
    assert uses_sso(boto3.session.Session(profile_name="modern"))
    assert not uses_sso(boto3.session.Session(profile_name="keys"))
    assert not uses_sso(boto3.session.Session())


def test_missing_aws_profile(aws_home: Path, aws_env: Sandbox) -> None:
    cloud = Ec2Cloud(make_profile(instance_id=aws_env.bastion_instance_id, aws_profile="nope"))
    with pytest.raises(CredentialsError) as caught:
        cloud.describe()
    assert "AWS profile 'nope' is not in the AWS config files" in caught.value.message
    assert caught.value.hint is not None and "aws configure --profile nope" in caught.value.hint


# --- IAM, on a private moto server that enforces it ---------------------------------------------


@dataclass(frozen=True)
class IamWorld:
    endpoint: str
    instance_id: str
    eip: str
    limited_key: tuple[str, str]  # may only ec2:DescribeInstances


def _set_moto_auth(endpoint: str, free_requests: str) -> None:
    # text/plain: moto reads the raw body; a form content type would be parsed away
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", method="POST",
                                     data=free_requests.encode(),
                                     headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert json.load(reply)["status"] == "ok"


@pytest.fixture(scope="module")
def iam_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IamWorld]:
    procs = ProcessSet()
    try:
        endpoint = sandbox_aws.start_moto(procs, tmp_path_factory.mktemp("iam-moto"))
        admin = boto3.session.Session(aws_access_key_id="testing",
                                      aws_secret_access_key="testing", region_name=REGION)
        ec2 = admin.client("ec2", endpoint_url=endpoint)
        vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.0.0/24")["Subnet"]["SubnetId"]
        launcher = Launcher(ec2, subnet)
        instance_id = launcher("iam-bastion", stopped=True)
        eip = launcher.associate_eip(instance_id)
        iam = admin.client("iam", endpoint_url=endpoint)
        iam.create_user(UserName="describe-only")
        iam.put_user_policy(UserName="describe-only", PolicyName="describe-only",
                            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                                {"Effect": "Allow", "Action": ["ec2:DescribeInstances"],
                                 "Resource": "*"}]}))
        key = iam.create_access_key(UserName="describe-only")["AccessKey"]
        _set_moto_auth(endpoint, "0")  # from now on every request is authenticated
        yield IamWorld(endpoint, instance_id, eip, (key["AccessKeyId"], key["SecretAccessKey"]))
    finally:
        procs.close()


def _iam_env(world: IamWorld, key: tuple[str, str], home: Path) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": world.endpoint, "AWS_ACCESS_KEY_ID": key[0],
            "AWS_SECRET_ACCESS_KEY": key[1], "AWS_REGION": REGION,
            "AWS_CONFIG_FILE": str(home / "no-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true"}


def test_missing_iam_permission_names_the_action(
        iam_world: IamWorld, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    use_aws_env(monkeypatch, _iam_env(iam_world, iam_world.limited_key, tmp_path))
    cloud = Ec2Cloud(make_profile(instance_id=iam_world.instance_id))

    with caplog.at_level(logging.WARNING, logger="bastion_tray.adapters.cloud"):
        info = cloud.describe()
        cloud.describe()
    # ec2:DescribeAddresses is denied: the address still comes from the public IP, one warning
    assert info.state == "stopped" and info.elastic_ip is None and info.address == iam_world.eip
    warnings = [r for r in caplog.records if "ec2:DescribeAddresses" in r.getMessage()]
    assert len(warnings) == 1
    assert f"[profile=foo instance={iam_world.instance_id}]" in warnings[0].getMessage()

    with pytest.raises(CloudError) as caught:
        cloud.start()
    error = caught.value
    assert type(error) is CloudError
    assert error.message.startswith(f"not allowed to call ec2:StartInstances to start instance "
                                    f"{iam_world.instance_id} in ap-northeast-1")
    assert error.hint is not None and '"ec2:StartInstances"' in error.hint
    assert "IAM policy" in error.hint
    assert cloud.describe().state == "stopped"


def test_rejected_access_key_is_a_credentials_error(
        iam_world: IamWorld, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_aws_env(monkeypatch, _iam_env(iam_world, ("AKIAUNKNOWN0000000000", "nope"), tmp_path))
    with pytest.raises(CredentialsError) as caught:
        Ec2Cloud(make_profile(instance_id=iam_world.instance_id)).describe()
    assert "AWS rejected the credentials" in caught.value.message
    assert "AuthFailure" in caught.value.message
    assert caught.value.hint is not None and "aws configure --profile default" in caught.value.hint


# --- the network ---------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_endpoint_names_the_url(aws_env: Sandbox,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    cloud = Ec2Cloud(make_profile(instance_id=aws_env.bastion_instance_id),
                     limits=ApiLimits(total_max_attempts=1, connect_timeout=1, read_timeout=1))
    started = time.monotonic()
    with pytest.raises(CloudError) as caught:
        cloud.describe()
    assert time.monotonic() - started < 5
    assert type(caught.value) is CloudError
    assert caught.value.message.startswith(f"cannot reach the EC2 API at {url}/")
    assert caught.value.hint is not None and "network/VPN" in caught.value.hint


EC2_XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"


def ec2_error_xml(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}'
            f"</Code><Message>{message}</Message></Error></Errors><RequestID>scripted"
            "</RequestID></Response>").encode()


def describe_instances_xml(instance_id: str, state: str, code: int) -> bytes:
    return (f'<DescribeInstancesResponse xmlns="{EC2_XMLNS}"><requestId>scripted</requestId>'
            f"<reservationSet><item><reservationId>r-1</reservationId><instancesSet><item>"
            f"<instanceId>{instance_id}</instanceId><instanceState><code>{code}</code>"
            f"<name>{state}</name></instanceState></item></instancesSet></item>"
            "</reservationSet></DescribeInstancesResponse>").encode()


class ScriptedEc2:
    """An EC2 endpoint on 127.0.0.1 answering each Action with a fixed (status, XML body).

    For the replies moto never gives (throttling, IncorrectInstanceState): botocore still
    speaks real HTTP to it, so its retries and parsing are the real ones.
    """

    def __init__(self, replies: dict[str, tuple[int, bytes]]) -> None:
        self.calls: list[tuple[str, str]] = []  # (Action, User-Agent)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                action = parse_qs(body.decode()).get("Action", ["?"])[0]
                outer.calls.append((action, self.headers.get("User-Agent", "")))
                status, reply = replies[action]
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted_ec2(aws_env: Sandbox, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[Callable[[dict[str, tuple[int, bytes]]], ScriptedEc2]]:
    endpoints: list[ScriptedEc2] = []

    def make(replies: dict[str, tuple[int, bytes]]) -> ScriptedEc2:
        endpoints.append(ScriptedEc2(replies))
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoints[-1].url)
        return endpoints[-1]

    yield make
    for endpoint in endpoints:
        endpoint.close()


def test_throttling_that_never_ends_fails_after_every_attempt_of_the_default_limits(
        scripted_ec2: Callable[[dict[str, tuple[int, bytes]]], ScriptedEc2]) -> None:
    ec2 = scripted_ec2({"StartInstances": (503, ec2_error_xml(
        "RequestLimitExceeded", "Request limit exceeded."))})
    cloud = Ec2Cloud(make_profile(instance_id="i-0123456789abcdef0"))
    with pytest.raises(CloudError) as caught:
        cloud.start()
    attempts = ApiLimits().total_max_attempts
    assert attempts >= 3  # a try and at least two retries
    assert [action for action, _ in ec2.calls] == ["StartInstances"] * attempts
    assert all("bastion-tray" in agent for _, agent in ec2.calls)
    assert caught.value.message == ("EC2 throttled the request to start instance "
                                    f"i-0123456789abcdef0 after {attempts} attempts "
                                    "(RequestLimitExceeded)")


class ThrottlingProxy:
    """The sandbox's moto behind a front on 127.0.0.1 that throttles the first `throttled`
    requests (HTTP 400 RequestLimitExceeded, as EC2 words it) and passes every later one on.

    400, not 503: botocore must retry it because it is throttling, not because it is a 5xx.
    """

    def __init__(self, upstream: str, throttled: int) -> None:
        self.calls: list[tuple[str, int]] = []  # (Action, HTTP status answered)
        self.throttled = throttled
        upstream_port = int(upstream.rsplit(":", 1)[1])
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                action = parse_qs(body.decode()).get("Action", ["?"])[0]
                if outer.throttled > 0:
                    outer.throttled -= 1
                    status, ctype, reply = 400, "text/xml", ec2_error_xml(
                        "RequestLimitExceeded", "Request limit exceeded.")
                else:
                    moto = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=10)
                    try:
                        moto.request("POST", self.path, body, headers=dict(self.headers))
                        answer = moto.getresponse()
                        status, ctype = answer.status, answer.getheader("Content-Type", "")
                        reply = answer.read()
                    finally:
                        moto.close()
                outer.calls.append((action, status))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_throttling_is_retried_with_the_default_limits_and_the_answer_is_used(
        aws_env: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = ThrottlingProxy(aws_env.env["AWS_ENDPOINT_URL"], throttled=2)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        info = Ec2Cloud(make_profile(instance_id=aws_env.bastion_instance_id)).describe()
    finally:
        proxy.close()
    assert info.instance_id == aws_env.bastion_instance_id and info.address == aws_env.eip
    assert proxy.calls == [("DescribeInstances", 400), ("DescribeInstances", 400),
                           ("DescribeInstances", 200), ("DescribeAddresses", 200)]


def test_start_while_stopping_says_it_is_stopping(
        scripted_ec2: Callable[[dict[str, tuple[int, bytes]]], ScriptedEc2]) -> None:
    instance_id = "i-0123456789abcdef0"
    ec2 = scripted_ec2({
        "StartInstances": (400, ec2_error_xml("IncorrectInstanceState", f"The instance "
                           f"'{instance_id}' is not in a state from which it can be started.")),
        "DescribeInstances": (200, describe_instances_xml(instance_id, "stopping", 64)),
    })
    with pytest.raises(CloudError) as caught:
        Ec2Cloud(make_profile(instance_id=instance_id)).start()
    assert caught.value.message == f"cannot start instance {instance_id}: it is stopping"
    assert caught.value.hint == "wait until it has stopped, then start it again"
    assert [action for action, _ in ec2.calls] == ["StartInstances", "DescribeInstances"]


def test_default_limits_retry_in_standard_mode() -> None:
    config = ApiLimits().client_config()
    assert config.retries == {"total_max_attempts": 3, "mode": "standard"}
    assert (config.connect_timeout, config.read_timeout) == (3.0, 6.0)
    assert config.user_agent_extra == "bastion-tray"


def test_default_limits_bound_a_hanging_call_below_30_s() -> None:
    limits = ApiLimits()
    # every attempt times out on connect and read; two short non-throttling backoffs between
    assert limits.longest_call == pytest.approx(3 * (3.0 + 6.0) + 0.05 + 0.1)
    assert limits.longest_call < 30
    # the 5 s / 8 s / 3 attempts that look natural would not be
    assert ApiLimits(total_max_attempts=3, connect_timeout=5, read_timeout=8).longest_call > 30


class SilentEndpoint:
    """A TCP listener on 127.0.0.1 that accepts every connection and never sends a byte: a
    proxy, a captive portal or a VPN route to nowhere, as a client sees it."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.accepted.append(conn)  # held open, never read, never answered

    def __enter__(self) -> SilentEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        for conn in self.accepted:
            conn.close()


@pytest.mark.timeout(60)
def test_an_endpoint_that_accepts_and_never_answers_fails_within_30_s_naming_it(
        aws_env: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    limits = ApiLimits()
    with SilentEndpoint() as silent:
        monkeypatch.setenv("AWS_ENDPOINT_URL", silent.url)
        cloud = Ec2Cloud(make_profile(instance_id=aws_env.bastion_instance_id))
        assert cloud.endpoint == silent.url
        started = time.monotonic()
        with pytest.raises(CloudError) as caught:
            cloud.describe()
        took = time.monotonic() - started
        connections = len(silent.accepted)
    assert took < 30
    # it did wait for an answer, on a new connection per attempt, every attempt
    assert took >= limits.total_max_attempts * limits.read_timeout - 0.5
    assert connections == limits.total_max_attempts
    error = caught.value
    assert type(error) is CloudError
    assert error.message.startswith(
        f"the EC2 API at {silent.url}/ did not answer the request to describe instance "
        f"{aws_env.bastion_instance_id} (connected, no reply; gave up after "), error.message
    assert error.hint is not None
    assert "network/VPN" in error.hint and "AWS_ENDPOINT_URL" in error.hint


# --- endpoint: what the calls use, for messages; no network, no credentials --------------------


def test_endpoint_is_the_sandbox_endpoint_before_and_after_a_call(aws_env: Sandbox) -> None:
    cloud = Ec2Cloud(make_profile(instance_id=aws_env.bastion_instance_id))
    assert cloud.endpoint == aws_env.endpoint_url
    cloud.describe()
    assert cloud.endpoint == aws_env.endpoint_url


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "https://ec2.ap-northeast-1.amazonaws.com"),
    ({"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}, "http://127.0.0.1:1"),
    ({"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ENDPOINT_URL_EC2": "http://127.0.0.1:2"},
     "http://127.0.0.1:2"),
], ids=["region-default", "endpoint-url", "ec2-endpoint-url-wins"])
def test_endpoint_follows_the_environment_without_credentials_or_a_connection(
        aws_home: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
        expected: str) -> None:
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2", "AWS_EC2_METADATA_DISABLED"):
        monkeypatch.delenv(key, raising=False)  # instance metadata too: a lookup would connect
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    connects: list[object] = []
    this_thread = threading.current_thread()
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        if threading.current_thread() is this_thread:  # the sandbox's watcher thread may poll
            connects.append(address)
            raise OSError("no connection may be made to tell the endpoint")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    cloud = Ec2Cloud(make_profile(instance_id="i-0123456789abcdef0"))
    assert cloud.endpoint == expected
    assert connects == []


def test_endpoint_without_a_client_is_described_from_the_environment(
        aws_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_EC2", raising=False)
    missing = make_profile(instance_id="i-0123456789abcdef0", aws_profile="nope")
    assert Ec2Cloud(missing).endpoint == "https://ec2.ap-northeast-1.amazonaws.com"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert Ec2Cloud(missing).endpoint == "http://127.0.0.1:1"


def test_session_is_created_lazily_once(aws_env: Sandbox) -> None:
    made: list[str] = []

    def factory(profile: Profile) -> boto3.session.Session:
        made.append(profile.name)
        return default_session(profile)

    cloud = Ec2Cloud(make_profile(instance_id=aws_env.bastion_instance_id), factory)
    assert made == []
    cloud.describe()
    cloud.describe()
    assert made == ["foo"]
    cloud.close()
    cloud.describe()  # a closed adapter opens a new client on its next call
    assert made == ["foo", "foo"]


# --- translate(), with botocore errors built by hand (pure data) ----------------------------------


def client_error(code: str, message: str = "", operation: str = "StartInstances",
                 retries: int | None = None) -> ClientError:
    response: dict[str, Any] = {"Error": {"Code": code, "Message": message}}
    if retries is not None:
        response["ResponseMetadata"] = {"RetryAttempts": retries}
    return ClientError(response, operation)  # type: ignore[arg-type]


@pytest.fixture
def no_aws_profile_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_PROFILE", raising=False)


FOO = make_profile(instance_id="i-0abc", aws_profile="foo")
SSO_HINT = "run: aws sso login --profile foo"
CONFIGURE_HINT = "configure credentials: aws configure --profile foo, or set AWS_PROFILE"


def test_translate_unauthorized_operation_drops_the_encoded_blob() -> None:
    exc = client_error("UnauthorizedOperation", "You are not authorized to perform this "
                       "operation. User: arn:aws:iam::1:user/x is not authorized to perform: "
                       "ec2:StopInstances. Encoded authorization failure message: AAAA" + "B" * 900,
                       operation="StopInstances")
    error = translate(exc, "StopInstances", FOO)
    assert type(error) is CloudError
    assert error.message.startswith("not allowed to call ec2:StopInstances to stop instance "
                                    "i-0abc in ap-northeast-1 (AWS profile foo): You are not "
                                    "authorized")
    assert "Encoded" not in error.message and "BBBB" not in error.message
    assert error.hint is not None and '"ec2:StopInstances"' in error.hint


@pytest.mark.parametrize(("state", "hint_part"), [
    ("stopping", "wait until it has stopped"),
    ("pending", "wait until it is running"),
    ("terminated", "the instance is gone"),
])
def test_translate_incorrect_instance_state_says_the_state(state: str, hint_part: str) -> None:
    exc = client_error("IncorrectInstanceState", "The instance 'i-0abc' is not in a state from "
                       "which it can be started.")
    error = translate(exc, "StartInstances", FOO, state=state)
    assert error.message == f"cannot start instance i-0abc: it is {state}"
    assert error.hint is not None and hint_part in error.hint
    # without a known state, AWS's own sentence is kept
    assert "is not in a state" in translate(exc, "StartInstances", FOO).message


@pytest.mark.parametrize("code", ["RequestLimitExceeded", "Throttling"])
def test_translate_throttling_after_retries(code: str) -> None:
    error = translate(client_error(code, retries=4), "DescribeInstances", FOO)
    assert error.message == f"EC2 throttled the request to describe instance i-0abc after " \
                            f"5 attempts ({code})"


@pytest.mark.parametrize("code", ["ExpiredToken", "ExpiredTokenException", "RequestExpired"])
@pytest.mark.parametrize(("uses_sso", "hint"), [(True, SSO_HINT), (False, CONFIGURE_HINT)])
def test_translate_expired_credentials(code: str, uses_sso: bool, hint: str) -> None:
    error = translate(client_error(code, "The security token included in the request is "
                                   "expired"), "StartInstances", FOO, uses_sso=uses_sso)
    assert type(error) is CredentialsError
    assert "expired" in error.message and code in error.message
    assert error.hint == hint


@pytest.mark.parametrize("exc", [
    UnauthorizedSSOTokenError(),
    SSOTokenLoadError(error_msg="Token for corp does not exist"),
    TokenRetrievalError(provider="sso", error_msg="refresh failed"),
    client_error("UnauthorizedException", "Session token not found or invalid",
                 operation="GetRoleCredentials"),
], ids=["unauthorized-sso-token", "sso-token-load", "sso-token-retrieval", "get-role-creds"])
def test_translate_sso_errors_hint_sso_login_even_without_sso_config(exc: Exception) -> None:
    error = translate(exc, "DescribeInstances", FOO, uses_sso=False)
    assert type(error) is CredentialsError
    assert error.hint == SSO_HINT


def test_translate_credentials_hint_names_the_default_profile(no_aws_profile_env: None) -> None:
    error = translate(NoCredentialsError(), "DescribeInstances", make_profile(name="foo-bastion"))
    assert type(error) is CredentialsError
    assert error.message == ("could not describe instance Name=foo-bastion in ap-northeast-1 "
                             "(default AWS credentials): no AWS credentials were found")
    assert error.hint == ("configure credentials: aws configure --profile default, "
                          "or set AWS_PROFILE")
    sso = translate(UnauthorizedSSOTokenError(), "DescribeInstances", make_profile(name="x"))
    assert sso.hint == "run: aws sso login --profile default"


def test_translate_names_a_profile_chosen_by_aws_profile_env(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "team")
    profile = make_profile(instance_id="i-0abc")
    expired = translate(client_error("ExpiredToken"), "StartInstances", profile, uses_sso=True)
    assert expired.hint == "run: aws sso login --profile team"
    not_found = translate(client_error("InvalidInstanceID.NotFound"), "StartInstances", profile)
    assert "ap-northeast-1 (AWS profile team from the environment)" in not_found.message


def test_translate_profile_not_found() -> None:
    error = translate(ProfileNotFound(profile="foo"), "DescribeInstances", FOO)
    assert type(error) is CredentialsError
    assert "AWS profile 'foo' is not in the AWS config files" in error.message
    assert error.hint is not None and "fix aws_profile in [profiles.foo]" in error.hint


@pytest.mark.parametrize(("make", "says"), [
    (lambda url: EndpointConnectionError(endpoint_url=url),
     "cannot reach the EC2 API at {url} to start instance i-0abc: Could not connect"),
    (lambda url: ConnectTimeoutError(endpoint_url=url, error="timed out"),
     "the EC2 API at {url} did not answer the request to start instance i-0abc "
     "(no connection; gave up after 9 s)"),
    (lambda url: ReadTimeoutError(endpoint_url=url, error="timed out"),
     "the EC2 API at {url} did not answer the request to start instance i-0abc "
     "(connected, no reply; gave up after 9 s)"),
], ids=["connection", "connect-timeout", "read-timeout"])
def test_translate_network_errors_name_the_url(make: Callable[[str], Exception],
                                               says: str) -> None:
    url = "https://ec2.ap-northeast-1.amazonaws.com/"
    error = translate(make(url), "StartInstances", FOO, elapsed=9.2)
    assert type(error) is CloudError
    assert error.message.startswith(says.format(url=url)), error.message
    assert error.hint is not None and "network/VPN" in error.hint and "ap-northeast-1" in error.hint
    assert "AWS_ENDPOINT_URL" in error.hint


def test_translate_unknown_client_error_keeps_code_and_message() -> None:
    error = translate(client_error("OperationNotPermitted", "stop protection is on",
                                   operation="StopInstances"), "StopInstances", FOO)
    assert type(error) is CloudError
    assert error.message == ("could not stop instance i-0abc in ap-northeast-1 (AWS profile foo): "
                             "OperationNotPermitted: stop protection is on")
