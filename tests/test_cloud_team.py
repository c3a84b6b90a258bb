"""The team adapters against a real local AWS endpoint (moto's server on 127.0.0.1), no mocks:
the lease tags of Ec2Cloud, the backstop schedule (SchedulerBackstop), the backstop's IAM role.

As in test_cloud.py: leases go on instances these tests launch in the sandbox's subnet, never on
the sandbox's bastion; schedules are for made-up instance ids and fire a day from now, so the
sandbox's own Scheduler (which runs due bastion-tray-* schedules) never runs one; roles have
names of their own. Denied calls run on a private moto server that enforces IAM (a server-wide
switch). Where moto cannot answer as AWS does (Scheduler's AccessDeniedException: moto sends
an XML body on a JSON API), a scripted endpoint on 127.0.0.1 answers with AWS's own shapes.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from bastion_tray.adapters import iam_role
from bastion_tray.adapters.backstop import SchedulerBackstop
from bastion_tray.adapters.cloud import ApiLimits, Ec2Cloud, default_session
from bastion_tray.adapters.cloud_errors import translate
from bastion_tray.core import team
from bastion_tray.core.config import Profile
from bastion_tray.core.errors import CloudError
from bastion_tray.sandbox import Sandbox
from bastion_tray.sandbox import aws as sandbox_aws
from bastion_tray.sandbox.procs import ProcessSet
from tests.test_cloud import (
    REGION,
    Launcher,
    _closed_port,
    _set_moto_auth,
    client_error,
    make_profile,
    unique_name,
    use_aws_env,
)

ACCOUNT = "123456789012"  # moto's
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/bastion-tray-test-backstop"
DAY = 86400.0


def admin_client(endpoint: str, service: str) -> Any:
    session = boto3.session.Session(aws_access_key_id="testing",
                                    aws_secret_access_key="testing", region_name=REGION)
    return session.client(service, endpoint_url=endpoint)


@pytest.fixture
def aws_env(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    use_aws_env(monkeypatch, sandbox.env)
    return sandbox


@pytest.fixture(scope="module")
def launch(sandbox: Sandbox) -> Iterator[Launcher]:
    launcher = Launcher(sandbox.ec2(), sandbox.vpc.public_subnet_id)
    yield launcher
    launcher.cleanup()


def tags_of(ec2: Any, instance_id: str) -> dict[str, str]:
    reply = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [instance_id]}])
    return {t["Key"]: t["Value"] for t in reply["Tags"]}


# --- leases ------------------------------------------------------------------------------------


def test_put_renew_and_delete_a_lease(aws_env: Sandbox, launch: Launcher) -> None:
    name = unique_name("lease")
    instance_id = launch(name)
    cloud = Ec2Cloud(make_profile(instance_id=instance_id))
    until = time.time() + 600.25

    cloud.put_lease("alice@laptop-a", until)
    tags = tags_of(launch.ec2, instance_id)
    assert tags == {"Name": name, "bastion-tray:lease:alice@laptop-a": team.iso_utc(until)}
    # whole seconds, rounded up: a lease never ends before the time it was asked for
    assert team.parse_iso_utc(tags["bastion-tray:lease:alice@laptop-a"]) == math.ceil(until)

    cloud.put_lease("alice@laptop-a", until + 600)  # a renewal replaces the value
    assert tags_of(launch.ec2, instance_id) == {
        "Name": name, "bastion-tray:lease:alice@laptop-a": team.iso_utc(until + 600)}

    cloud.delete_lease("alice@laptop-a")
    assert tags_of(launch.ec2, instance_id) == {"Name": name}


def test_describe_lists_only_the_lease_tags_sorted_and_a_release_leaves_the_rest(
        aws_env: Sandbox, launch: Launcher) -> None:
    name = unique_name("leases")
    instance_id = launch(name)
    others = {"team": "ops", "bastion-tray:note": "not a lease", "bastion-tray:lease": "no colon"}
    launch.ec2.create_tags(Resources=[instance_id],
                           Tags=[{"Key": k, "Value": v} for k, v in others.items()])
    cloud = Ec2Cloud(make_profile(instance_id=instance_id))
    now = time.time()
    for offset, user in enumerate(("zed@z", "alice@a", "bob@b")):
        cloud.put_lease(user, now + 60 * (offset + 1))

    info = cloud.describe()
    assert info.leases == (("alice@a", team.iso_utc(now + 120)),
                           ("bob@b", team.iso_utc(now + 180)),
                           ("zed@z", team.iso_utc(now + 60)))
    assert [lease.until for lease in team.leases_from(info.leases)] == [
        math.ceil(now + 120), math.ceil(now + 180), math.ceil(now + 60)]

    cloud.delete_lease("bob@b")
    assert tags_of(launch.ec2, instance_id) == {
        "Name": name, **others, "bastion-tray:lease:alice@a": team.iso_utc(now + 120),
        "bastion-tray:lease:zed@z": team.iso_utc(now + 60)}
    assert [user for user, _ in cloud.describe().leases] == ["alice@a", "zed@z"]


def test_a_lease_goes_on_the_bastion_found_by_name_and_nowhere_else(
        aws_env: Sandbox, launch: Launcher) -> None:
    name = unique_name("by-name")
    instance_id, bystander = launch(name), launch(unique_name("bystander"))
    cloud = Ec2Cloud(make_profile(name=name))
    cloud.put_lease("carol@c", time.time() + 60)
    assert cloud.instance_id == instance_id
    assert [user for user, _ in cloud.describe().leases] == ["carol@c"]
    assert not any(k.startswith(team.LEASE_PREFIX) for k in tags_of(launch.ec2, bystander))
    sandbox_tags = tags_of(launch.ec2, aws_env.bastion_instance_id)
    assert not any(k.startswith(team.LEASE_PREFIX) for k in sandbox_tags)


def test_deleting_a_lease_that_is_not_there_is_fine(aws_env: Sandbox, launch: Launcher) -> None:
    name = unique_name("no-lease")
    instance_id = launch(name)
    cloud = Ec2Cloud(make_profile(instance_id=instance_id))
    cloud.delete_lease("nobody@nowhere")
    assert tags_of(launch.ec2, instance_id) == {"Name": name}
    assert cloud.describe().leases == ()


# --- the backstop schedule -----------------------------------------------------------------------


def backstop_profile(role: str | None = ROLE_ARN) -> Profile:
    profile = make_profile(instance_id="i-0123456789abcdef0")
    return replace(profile, bastion=replace(profile.bastion, backstop_role=role))


def made_up_instance_id() -> str:
    return "i-0" + uuid.uuid4().hex[:16]


@dataclass
class Recorder:
    """A session factory whose Scheduler requests are recorded as sent (operation, JSON body),
    with optional hooks before an operation's call: real requests, observed on the way out."""

    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    before: dict[str, Callable[[], object]] = field(default_factory=dict)

    def factory(self, profile: Profile) -> boto3.session.Session:
        session = default_session(profile)
        session.events.register("before-send.scheduler", self._record)
        session.events.register("before-call.scheduler", self._before)
        return session

    def operations(self) -> list[str]:
        return [op for op, _ in self.sent]

    def _record(self, request: Any, event_name: str, **kwargs: Any) -> None:
        body = request.body or b"{}"
        self.sent.append((event_name.rsplit(".", 1)[-1],
                          json.loads(body.decode() if isinstance(body, bytes) else body)))

    def _before(self, event_name: str, **kwargs: Any) -> None:
        hook = self.before.pop(event_name.rsplit(".", 1)[-1], None)
        if hook is not None:
            hook()


@pytest.fixture
def schedules(aws_env: Sandbox) -> Iterator[Any]:
    """The sandbox's Scheduler as an administrator sees it; every bastion-tray-i-0… schedule a
    test made is deleted afterwards."""
    scheduler = admin_client(aws_env.endpoint_url, "scheduler")
    before = _backstop_names(scheduler)
    yield scheduler
    for name in _backstop_names(scheduler) - before:
        scheduler.delete_schedule(Name=name, GroupName="default")


def _backstop_names(scheduler: Any) -> set[str]:
    pages = scheduler.get_paginator("list_schedules").paginate(GroupName="default",
                                                               NamePrefix="bastion-tray-")
    return {s["Name"] for page in pages for s in page.get("Schedules", [])}


def contract_fields(instance_id: str, fires: float, role: str = ROLE_ARN) -> dict[str, Any]:
    return {
        "Name": f"bastion-tray-{instance_id}",
        "GroupName": "default",
        "ScheduleExpression": "at(" + time.strftime("%Y-%m-%dT%H:%M:%S",
                                                    time.gmtime(math.ceil(fires))) + ")",
        "ScheduleExpressionTimezone": "UTC",
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "Target": {"Arn": "arn:aws:scheduler:::aws-sdk:ec2:stopInstances", "RoleArn": role,
                   "Input": json.dumps({"InstanceIds": [instance_id]})},
        "ActionAfterCompletion": "DELETE",
        "State": "ENABLED",
    }


def stored(scheduler: Any, instance_id: str) -> dict[str, Any]:
    """The schedule as GetSchedule returns it, cut to the contract's fields."""
    reply = scheduler.get_schedule(Name=f"bastion-tray-{instance_id}", GroupName="default")
    target = reply["Target"]
    return {**{k: reply.get(k) for k in contract_fields(instance_id, 0)},
            "Target": {k: target.get(k) for k in ("Arn", "RoleArn", "Input")}}


def test_push_creates_the_schedule_the_contract_describes(schedules: Any) -> None:
    instance_id = made_up_instance_id()
    at = time.time() + DAY + 0.4
    fires = SchedulerBackstop(backstop_profile()).push(instance_id, at)
    assert fires == math.ceil(at)
    assert stored(schedules, instance_id) == contract_fields(instance_id, at)
    expression = schedules.get_schedule(Name=f"bastion-tray-{instance_id}")["ScheduleExpression"]
    assert team.parse_at_expression(expression) == fires


def test_push_earlier_keeps_the_later_time_and_push_later_moves_it(schedules: Any) -> None:
    instance_id = made_up_instance_id()
    recorder = Recorder()
    backstop = SchedulerBackstop(backstop_profile(), recorder.factory)
    at = time.time() + DAY
    assert backstop.push(instance_id, at) == math.ceil(at)

    recorder.sent.clear()
    assert backstop.push(instance_id, at - 3600) == math.ceil(at)
    assert stored(schedules, instance_id) == contract_fields(instance_id, at)
    assert recorder.operations() == ["GetSchedule"]  # nothing to change: nothing written

    recorder.sent.clear()
    assert backstop.push(instance_id, at + 3600) == math.ceil(at + 3600)
    assert stored(schedules, instance_id) == contract_fields(instance_id, at + 3600)
    assert recorder.operations() == ["GetSchedule", "UpdateSchedule"]


def test_an_update_resends_every_field_and_repairs_a_schedule_someone_changed(
        schedules: Any) -> None:
    instance_id = made_up_instance_id()
    later = time.time() + 2 * DAY
    # someone disabled it, made it flexible, pointed it elsewhere and kept it after completion
    schedules.create_schedule(
        Name=f"bastion-tray-{instance_id}", GroupName="default",
        ScheduleExpression=team.at_expression(later), ScheduleExpressionTimezone="UTC",
        FlexibleTimeWindow={"Mode": "FLEXIBLE", "MaximumWindowInMinutes": 15},
        Target={"Arn": team.STOP_TARGET_ARN, "RoleArn": ROLE_ARN.replace("test", "other"),
                "Input": json.dumps({"InstanceIds": ["i-0ffffffffffffffff"]})},
        ActionAfterCompletion="NONE", State="DISABLED")
    recorder = Recorder()
    fires = SchedulerBackstop(backstop_profile(), recorder.factory).push(instance_id, later - DAY)

    assert fires == math.ceil(later)  # the time is only ever moved later
    assert recorder.operations() == ["GetSchedule", "UpdateSchedule"]
    update = recorder.sent[1][1]
    # UpdateSchedule resets whatever it is not sent: every field goes, the contract's values
    expected = contract_fields(instance_id, later)
    assert {k: update.get(k) for k in expected if k != "Name"} == {
        k: v for k, v in expected.items() if k != "Name"}
    got = stored(schedules, instance_id)
    assert (got["State"], got["FlexibleTimeWindow"], got["Target"]) == (
        "ENABLED", {"Mode": "OFF"}, expected["Target"])


def test_a_schedule_whose_time_cannot_be_read_gets_ours(schedules: Any) -> None:
    instance_id = made_up_instance_id()
    schedules.create_schedule(
        Name=f"bastion-tray-{instance_id}", GroupName="default",
        ScheduleExpression="rate(5 minutes)", FlexibleTimeWindow={"Mode": "OFF"},
        Target={"Arn": team.STOP_TARGET_ARN, "RoleArn": ROLE_ARN}, State="DISABLED")
    at = time.time() + DAY
    assert SchedulerBackstop(backstop_profile()).push(instance_id, at) == math.ceil(at)
    assert stored(schedules, instance_id)["ScheduleExpression"] == team.at_expression(at)


@pytest.mark.parametrize(("theirs", "ours", "written"), [
    (2 * DAY, DAY, ["GetSchedule", "CreateSchedule", "GetSchedule"]),
    (DAY, 2 * DAY, ["GetSchedule", "CreateSchedule", "GetSchedule", "UpdateSchedule"]),
], ids=["theirs-later-is-kept", "ours-later-wins"])
def test_a_teammate_creating_it_between_our_read_and_our_create(
        schedules: Any, theirs: float, ours: float, written: list[str]) -> None:
    instance_id = made_up_instance_id()
    now = time.time()
    teammate = SchedulerBackstop(backstop_profile())  # another daemon, its own session
    recorder = Recorder(before={"CreateSchedule": lambda: teammate.push(instance_id,
                                                                        now + theirs)})
    fires = SchedulerBackstop(backstop_profile(), recorder.factory).push(instance_id, now + ours)
    assert fires == math.ceil(now + max(theirs, ours))
    assert recorder.operations() == written  # the create met ConflictException
    assert stored(schedules, instance_id) == contract_fields(instance_id, now + max(theirs, ours))


def test_delete_removes_it_and_deleting_one_that_is_gone_is_fine(schedules: Any) -> None:
    instance_id = made_up_instance_id()
    backstop = SchedulerBackstop(backstop_profile())
    backstop.push(instance_id, time.time() + DAY)
    bystander = made_up_instance_id()
    backstop.push(bystander, time.time() + DAY)
    backstop.delete(instance_id)
    names = _backstop_names(schedules)
    assert f"bastion-tray-{instance_id}" not in names
    assert f"bastion-tray-{bystander}" in names
    backstop.delete(instance_id)  # gone already
    backstop.delete(made_up_instance_id())  # never was


def test_push_without_a_role_says_how_to_set_one_and_calls_nothing(aws_env: Sandbox) -> None:
    recorder = Recorder()
    with pytest.raises(CloudError) as caught:
        SchedulerBackstop(backstop_profile(role=None), recorder.factory).push(
            made_up_instance_id(), time.time() + DAY)
    assert caught.value.hint is not None
    assert "backstop_role" in caught.value.hint and 'backstop = "off"' in caught.value.hint
    assert recorder.sent == []


# --- Scheduler's refusals, as AWS words them -----------------------------------------------------


class ScriptedScheduler:
    """A Scheduler endpoint on 127.0.0.1 answering each operation with a fixed (status, error
    type, message) the way AWS does: JSON body and x-amzn-ErrorType. Operations it has no
    answer for are answered 404 ResourceNotFoundException (no such schedule)."""

    def __init__(self, answers: dict[str, tuple[int, str, str]]) -> None:
        self.calls: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                if length:
                    self.rfile.read(length)
                operation = {"GET": "GetSchedule", "POST": "CreateSchedule",
                             "PUT": "UpdateSchedule", "DELETE": "DeleteSchedule"}[self.command]
                outer.calls.append(operation)
                status, kind, message = answers.get(
                    operation, (404, "ResourceNotFoundException", "Schedule does not exist."))
                body = json.dumps({"Message": message}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("x-amzn-ErrorType", f"{kind}:http://internal.amazon.com/")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


Answers = dict[str, tuple[int, str, str]]
Scripted = Callable[[Answers], ScriptedScheduler]


@pytest.fixture
def scripted_scheduler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Scripted]:
    endpoints: list[ScriptedScheduler] = []

    def make(answers: Answers) -> ScriptedScheduler:
        endpoints.append(ScriptedScheduler(answers))
        use_aws_env(monkeypatch, {
            "AWS_ENDPOINT_URL": endpoints[-1].url, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
            "AWS_EC2_METADATA_DISABLED": "true"})
        return endpoints[-1]

    yield make
    for endpoint in endpoints:
        endpoint.close()


def denied(action: str, extra: str = "") -> tuple[int, str, str]:
    return (400, "AccessDeniedException", f"User: arn:aws:iam::{ACCOUNT}:user/dev is not "
            f"authorized to perform: {action}{extra}")


INSTANCE = "i-0123456789abcdef0"
SCHEDULE = f"bastion-tray-{INSTANCE}"


@pytest.mark.parametrize(("answers", "call", "permission", "doing", "calls"), [
    ({"GetSchedule": denied("scheduler:GetSchedule")}, "push", "scheduler:GetSchedule",
     f"read the backstop schedule {SCHEDULE}", ["GetSchedule"]),
    ({"CreateSchedule": denied("scheduler:CreateSchedule")}, "push",
     "scheduler:CreateSchedule", f"create the backstop schedule {SCHEDULE}",
     ["GetSchedule", "CreateSchedule"]),
    # a 200 to GetSchedule: a schedule of no known shape, so ours replaces it
    ({"GetSchedule": (200, "", ""), "UpdateSchedule": denied("scheduler:UpdateSchedule")},
     "push", "scheduler:UpdateSchedule", f"push back the backstop schedule {SCHEDULE}",
     ["GetSchedule", "UpdateSchedule"]),
    ({"DeleteSchedule": denied("scheduler:DeleteSchedule")}, "delete",
     "scheduler:DeleteSchedule", f"delete the backstop schedule {SCHEDULE}", ["DeleteSchedule"]),
], ids=["get", "create", "update", "delete"])
def test_a_missing_scheduler_permission_is_named_and_the_backstop_said_off(
        scripted_scheduler: Scripted, answers: Answers, call: str, permission: str, doing: str,
        calls: list[str]) -> None:
    endpoint = scripted_scheduler(answers)
    backstop = SchedulerBackstop(backstop_profile())
    with pytest.raises(CloudError) as caught:
        if call == "push":
            backstop.push(INSTANCE, time.time() + DAY)
        else:
            backstop.delete(INSTANCE)
    error = caught.value
    assert type(error) is CloudError
    assert error.message == (f"not allowed to call {permission} to {doing} in ap-northeast-1 "
                             f"(default AWS credentials): User: arn:aws:iam::{ACCOUNT}:user/dev "
                             f"is not authorized to perform: {permission}")
    assert error.hint is not None
    assert error.hint.startswith(f'the backstop is off until "{permission}" is added to the '
                                 "IAM policy of these credentials")
    assert endpoint.calls == calls  # an AccessDenied is not retried


def test_a_missing_pass_role_permission_is_named(
        scripted_scheduler: Scripted) -> None:
    scripted_scheduler({"CreateSchedule": denied("iam:PassRole", f" on resource: {ROLE_ARN}")})
    with pytest.raises(CloudError) as caught:
        SchedulerBackstop(backstop_profile()).push(INSTANCE, time.time() + DAY)
    assert caught.value.message.startswith(
        f"not allowed to call iam:PassRole to create the backstop schedule {SCHEDULE} in ")
    assert caught.value.hint is not None
    assert caught.value.hint.startswith('the backstop is off until "iam:PassRole" on the '
                                        "backstop_role is added")


def test_a_role_scheduler_cannot_assume_is_reported_as_such(
        scripted_scheduler: Scripted) -> None:
    scripted_scheduler({"CreateSchedule": (400, "ValidationException", (
        "The execution role you provide must allow AWS EventBridge Scheduler to assume the "
        "role."))})
    with pytest.raises(CloudError) as caught:
        SchedulerBackstop(backstop_profile()).push(INSTANCE, time.time() + DAY)
    assert caught.value.message == (
        f"EventBridge Scheduler refused to create the backstop schedule {SCHEDULE}: The "
        "execution role you provide must allow AWS EventBridge Scheduler to assume the role.")
    assert caught.value.hint is not None and "scheduler.amazonaws.com" in caught.value.hint


def test_an_unreachable_scheduler_endpoint_is_named(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    use_aws_env(monkeypatch, {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                              "AWS_SECRET_ACCESS_KEY": "testing",
                              "AWS_CONFIG_FILE": str(tmp_path / "none"),
                              "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")})
    backstop = SchedulerBackstop(backstop_profile(), limits=ApiLimits(
        total_max_attempts=1, connect_timeout=1, read_timeout=1))
    with pytest.raises(CloudError) as caught:
        backstop.delete(INSTANCE)
    assert caught.value.message.startswith(
        f"cannot reach the EventBridge Scheduler API at {url}/ to delete the backstop schedule "
        f"{SCHEDULE}")
    assert caught.value.hint is not None and "AWS_ENDPOINT_URL_SCHEDULER" in caught.value.hint


# --- the backstop role -------------------------------------------------------------------------


@pytest.fixture
def roles(aws_env: Sandbox) -> Iterator[tuple[boto3.session.Session, Any, list[str]]]:
    """A session as init makes one (full botocore data), an administrator's IAM client, and a
    list of role names to delete afterwards."""
    session = boto3.session.Session(region_name=REGION)
    iam = admin_client(aws_env.endpoint_url, "iam")
    made: list[str] = []
    yield session, iam, made
    for name in made:
        for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            iam.delete_role_policy(RoleName=name, PolicyName=policy)
        iam.delete_role(RoleName=name)


def test_the_role_has_exactly_the_trust_and_the_one_permission(
        roles: tuple[boto3.session.Session, Any, list[str]]) -> None:
    session, iam, made = roles
    name = unique_name("role")
    made.append(name)
    account = iam_role.account_id(session)
    assert account == ACCOUNT
    arn = iam_role.instance_arn(REGION, account, INSTANCE)
    assert arn == f"arn:aws:ec2:ap-northeast-1:{ACCOUNT}:instance/{INSTANCE}"

    role = iam_role.provision_backstop_role(session, instance_arn=arn, role_name=name)
    assert (role.arn, role.created, role.policy_name) == (
        f"arn:aws:iam::{ACCOUNT}:role/{name}", True, f"bastion-tray-stop-{INSTANCE}")
    got = iam.get_role(RoleName=name)["Role"]
    assert got["Arn"] == role.arn
    assert got["AssumeRolePolicyDocument"] == {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "scheduler.amazonaws.com"},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": ACCOUNT}}}]}
    assert iam.list_role_policies(RoleName=name)["PolicyNames"] == [f"bastion-tray-stop-{INSTANCE}"]
    assert iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"] == []
    policy = iam.get_role_policy(RoleName=name, PolicyName=f"bastion-tray-stop-{INSTANCE}")
    assert policy["PolicyDocument"] == {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "ec2:StopInstances", "Resource": arn}]}


def test_a_second_run_reuses_the_role_and_a_second_bastion_adds_its_own_permission(
        roles: tuple[boto3.session.Session, Any, list[str]]) -> None:
    session, iam, made = roles
    name = unique_name("reuse")
    made.append(name)
    arn = iam_role.instance_arn(REGION, ACCOUNT, INSTANCE)
    first = iam_role.create_backstop_role(session, instance_arn=arn, role_name=name)
    again = iam_role.provision_backstop_role(session, instance_arn=arn, role_name=name)
    assert again.arn == first and not again.created
    assert iam.list_role_policies(RoleName=name)["PolicyNames"] == [f"bastion-tray-stop-{INSTANCE}"]

    other = "i-0fedcba9876543210"
    iam_role.create_backstop_role(session, instance_arn=iam_role.instance_arn(
        REGION, ACCOUNT, other), role_name=name)
    assert sorted(iam.list_role_policies(RoleName=name)["PolicyNames"]) == [
        f"bastion-tray-stop-{INSTANCE}", f"bastion-tray-stop-{other}"]


def test_an_existing_role_that_scheduler_may_not_assume_is_refused(
        roles: tuple[boto3.session.Session, Any, list[str]]) -> None:
    session, iam, made = roles
    name = unique_name("ec2-role")
    made.append(name)
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                "Principal": {"Service": "ec2.amazonaws.com"}}]}))
    with pytest.raises(CloudError) as caught:
        iam_role.create_backstop_role(
            session, instance_arn=iam_role.instance_arn(REGION, ACCOUNT, INSTANCE), role_name=name)
    assert caught.value.message == (f"the IAM role {name} exists, but its trust policy does not "
                                    "let scheduler.amazonaws.com assume it for account "
                                    f"{ACCOUNT}")
    assert iam.list_role_policies(RoleName=name)["PolicyNames"] == []  # nothing was added


@pytest.mark.parametrize(("document", "trusted"), [
    (iam_role.trust_policy(ACCOUNT), True),
    ({"Statement": {"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:TagSession"],
                    "Principal": {"Service": ["events.amazonaws.com",
                                              "scheduler.amazonaws.com"]}}}, True),
    ('%7B%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Principal%22%3A%7B%22Service'
     '%22%3A%22scheduler.amazonaws.com%22%7D%2C%22Action%22%3A%22sts%3AAssumeRole%22%7D%5D%7D',
     True),
    (iam_role.trust_policy("999999999999"), False),
    ({"Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                     "Principal": {"Service": "ec2.amazonaws.com"}}]}, False),
    ({"Statement": [*iam_role.trust_policy(ACCOUNT)["Statement"],
                    {"Effect": "Deny", "Action": "sts:AssumeRole", "Principal": "*"}]}, False),
    ("not json", False),
], ids=["ours", "lists", "url-encoded", "other-account", "other-service", "a-deny", "garbage"])
def test_which_trust_policies_count_as_trusting_scheduler(document: Any, trusted: bool) -> None:
    assert iam_role.trusts_scheduler(document, ACCOUNT) is trusted


@pytest.mark.parametrize(("region", "arn"), [
    ("ap-northeast-1", f"arn:aws:ec2:ap-northeast-1:{ACCOUNT}:instance/{INSTANCE}"),
    ("cn-north-1", f"arn:aws-cn:ec2:cn-north-1:{ACCOUNT}:instance/{INSTANCE}"),
    ("us-gov-west-1", f"arn:aws-us-gov:ec2:us-gov-west-1:{ACCOUNT}:instance/{INSTANCE}"),
])
def test_instance_arns_by_partition(region: str, arn: str) -> None:
    assert iam_role.instance_arn(region, ACCOUNT, INSTANCE) == arn


# --- denied, on a private moto server that enforces IAM ------------------------------------------


@dataclass(frozen=True)
class AuthWorld:
    """A moto server enforcing IAM, an instance in a subnet, and users with narrow policies."""

    endpoint: str
    instance_id: str
    keys: dict[str, tuple[str, str]]  # user → (access key id, secret)

    def env(self, user: str, home: Path) -> dict[str, str]:
        key = self.keys[user]
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": key[0],
                "AWS_SECRET_ACCESS_KEY": key[1], "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": str(home / "no-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-credentials"),
                "AWS_EC2_METADATA_DISABLED": "true"}


#: the users of an AuthWorld and what each may do
AUTH_USERS = {
    "admin": ["*"],
    # what init's discovery uses, and the account look-up; no IAM, no tags, no Scheduler
    "reader": ["ec2:Describe*", "sts:GetCallerIdentity"],
    "no-put-policy": ["ec2:Describe*", "sts:GetCallerIdentity", "iam:CreateRole",
                      "iam:GetRole"],
}


@pytest.fixture(scope="module")
def auth_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthWorld]:
    with auth_moto(tmp_path_factory.mktemp("auth-moto"), "team-bastion") as world:
        yield world


@contextlib.contextmanager
def auth_moto(state_dir: Path, bastion_name: str) -> Iterator[AuthWorld]:
    """A private moto server with a VPC, one instance named `bastion_name` in its subnet, and
    AUTH_USERS; IAM enforcement on from then on. Stopped on exit."""
    procs = ProcessSet()
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        endpoint = sandbox_aws.start_moto(procs, state_dir)
        ec2 = admin_client(endpoint, "ec2")
        vpc = ec2.create_vpc(CidrBlock="10.8.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.8.0.0/24")["Subnet"]["SubnetId"]
        instance_id = Launcher(ec2, subnet)(bastion_name, stopped=True)
        iam = admin_client(endpoint, "iam")
        keys = {}
        for user, actions in AUTH_USERS.items():
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        _set_moto_auth(endpoint, "0")  # from now on every request is authenticated
        yield AuthWorld(endpoint, instance_id, keys)
    finally:
        procs.close()


def test_a_lease_without_the_tag_permissions_names_them(
        auth_world: AuthWorld, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_aws_env(monkeypatch, auth_world.env("reader", tmp_path))
    cloud = Ec2Cloud(make_profile(instance_id=auth_world.instance_id))
    calls: tuple[tuple[Callable[[], None], str, str], ...] = (
            (lambda: cloud.put_lease("dave@d", time.time() + 60), "CreateTags",
             f"tag instance {auth_world.instance_id} with a lease"),
            (lambda: cloud.delete_lease("dave@d"), "DeleteTags",
             f"remove a lease tag from instance {auth_world.instance_id}"))
    for call, action, doing in calls:
        with pytest.raises(CloudError) as caught:
            call()
        error = caught.value
        assert type(error) is CloudError
        assert error.message.startswith(f"not allowed to call ec2:{action} to {doing} in "
                                        "ap-northeast-1 (default AWS credentials): "), \
            error.message
        assert f"ec2:{action}" in error.message.split(": ", 1)[1]  # AWS's own words follow
        assert error.hint is not None and f'add "ec2:{action}"' in error.hint
    assert cloud.describe().leases == ()  # reading still works, and nothing was tagged


@pytest.mark.parametrize("user", ["reader", "no-put-policy"])
def test_a_role_without_the_iam_permissions_says_to_ask_an_administrator(
        auth_world: AuthWorld, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        user: str) -> None:
    use_aws_env(monkeypatch, auth_world.env(user, tmp_path))
    session = boto3.session.Session(region_name=REGION)
    arn = iam_role.instance_arn(REGION, iam_role.account_id(session), auth_world.instance_id)
    with pytest.raises(CloudError) as caught:
        iam_role.create_backstop_role(session, instance_arn=arn, role_name=f"denied-{user}")
    error = caught.value
    assert error.message.startswith("not allowed to create IAM roles (iam:CreateRole, "
                                    "iam:PutRolePolicy) in ap-northeast-1 (default AWS "
                                    "credentials): "), error.message
    assert error.hint == "ask an administrator to create it, see the README's IAM section"


# --- translate(), hand-built errors ------------------------------------------------------------


FOO = backstop_profile()


@pytest.mark.parametrize(("action", "subject", "message"), [
    ("CreateRole", "bastion-tray-backstop", "not allowed to create IAM roles (iam:CreateRole, "
     "iam:PutRolePolicy) in ap-northeast-1 (default AWS credentials): denied"),
    ("PutRolePolicy", "bastion-tray-backstop", "not allowed to create IAM roles "
     "(iam:CreateRole, iam:PutRolePolicy) in ap-northeast-1 (default AWS credentials): denied"),
    ("GetRole", "bastion-tray-backstop", "not allowed to call iam:GetRole to read the IAM role "
     "bastion-tray-backstop in ap-northeast-1 (default AWS credentials): denied"),
    ("CreateTags", None, "not allowed to call ec2:CreateTags to tag instance "
     "i-0123456789abcdef0 with a lease in ap-northeast-1 (default AWS credentials): denied"),
])
def test_translate_words_each_denied_action(
        monkeypatch: pytest.MonkeyPatch, action: str, subject: str | None, message: str) -> None:
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_PROFILE", raising=False)
    error = translate(client_error("AccessDenied", "denied", operation=action), action, FOO,
                      subject=subject)
    assert error.message == message


def test_translate_says_which_service_throttled() -> None:
    error = translate(client_error("ThrottlingException", retries=2, operation="UpdateSchedule"),
                      "UpdateSchedule", FOO)
    assert error.message == ("EventBridge Scheduler throttled the request to push back the "
                             f"backstop schedule {SCHEDULE} after 3 attempts "
                             "(ThrottlingException)")
    assert error.hint is not None and "EventBridge Scheduler API calls" in error.hint
