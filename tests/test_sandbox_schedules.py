"""The sandbox's EventBridge Scheduler: moto stores schedules, the sandbox runs the backstops.

Against the session sandbox (moto's server, the real bastion sshd). Each test deletes the schedules
and roles it created and leaves the bastion stopped. Waits are bounded polls on the runner's
record, never bare sleeps; "it was left alone" is proven by a sentinel schedule created last: the
runner handles schedules oldest first, so once the sentinel's run is recorded, the poll that ran
it has already passed over every schedule created before it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from bastion_tray.core.team import SCHEDULE_PREFIX, STOP_TARGET_ARN, at_expression, stop_input
from bastion_tray.sandbox import Sandbox
from bastion_tray.sandbox import aws as sandbox_aws
from bastion_tray.sandbox.procs import wait_for
from bastion_tray.sandbox.schedules import (
    ScheduleRun,
    ScheduleRunner,
    backstop_trust_policy,
    instance_ids_from,
    trusts_scheduler,
)

pytestmark = pytest.mark.timeout(60)
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
FAR_FUTURE = 4102444800.0  # 2100-01-01T00:00:00Z: never due for the sandbox's own runner
RUN_TIMEOUT = 5.0  # the runner polls every 0.25 s


class Schedules:
    """Creates schedules in the sandbox and deletes, at the end, every one it created."""

    def __init__(self, sb: Sandbox) -> None:
        assert ipaddress.ip_address(sb.endpoint_url.split("//")[1].split(":")[0]) in LOOPBACK
        self.sb = sb
        self.client = sb.scheduler()
        self.created: list[str] = []
        self._earlier_runs = len(sb.schedule_runs())  # other tests' runs: not this test's

    def runs(self, name: str | None = None, expression: str | None = None) -> list[ScheduleRun]:
        """The sandbox runner's runs since this test began, of `name` and `expression`."""
        return [run for run in self.sb.schedule_runs()[self._earlier_runs:]
                if name in (None, run.name) and expression in (None, run.expression)]

    def wait_run(self, name: str, expression: str, timeout: float = RUN_TIMEOUT) -> ScheduleRun:
        assert wait_for(lambda: self.runs(name, expression), timeout=timeout), \
            f"{name} {expression} did not run in {timeout:.0f}s; runs: {self.runs()}"
        return self.runs(name, expression)[0]

    def create(self, name: str, when: float, *, role: str | None = None,
               target_arn: str = STOP_TARGET_ARN, after: str = "DELETE",
               instance_id: str | None = None, state: str = "ENABLED") -> str:
        """A one-time schedule at `when` (epoch seconds); returns its expression."""
        expression = at_expression(when)
        target = {"Arn": target_arn, "RoleArn": role or self.sb.backstop_role_arn,
                  "Input": stop_input(instance_id or self.sb.bastion_instance_id)}
        self.client.create_schedule(
            Name=name, GroupName="default", ScheduleExpression=expression,
            ScheduleExpressionTimezone="UTC", FlexibleTimeWindow={"Mode": "OFF"},
            Target=target, ActionAfterCompletion=after, State=state)
        self.created.append(name)
        return expression

    def sentinel(self) -> ScheduleRun:
        """Create a due bastion-tray schedule whose role is missing (it stops nothing) and wait
        for its run: every schedule created before it was passed over by then."""
        name = f"{SCHEDULE_PREFIX}sentinel-{uuid.uuid4().hex[:8]}"
        expression = self.create(name, time.time() - 1, role=missing_role())
        return self.wait_run(name, expression)

    def delete_all(self) -> None:
        for name in self.created:
            with contextlib.suppress(self.client.exceptions.ResourceNotFoundException):
                self.client.delete_schedule(Name=name, GroupName="default")


def missing_role() -> str:
    return f"arn:aws:iam::123456789012:role/no-such-role-{uuid.uuid4().hex[:8]}"


def wait_state(sb: Sandbox, state: str, timeout: float = 5.0) -> None:
    assert wait_for(lambda: sb.instance_state() == state, timeout=timeout), sb.instance_state()


def exists(sb: Sandbox, name: str) -> bool:
    return name in sb.schedules()


@pytest.fixture
def schedules(sandbox: Sandbox) -> Iterator[Schedules]:
    made = Schedules(sandbox)
    yield made
    made.delete_all()
    sandbox.reset()  # the bastion stopped and sshd down, as fresh_sandbox expects to find it


@pytest.fixture
def runner(sandbox: Sandbox) -> Iterator[ScheduleRunner]:
    """A second runner on the sandbox, not started: the test drives `step()` and the clock."""
    endpoint = sandbox.endpoint_url
    made = ScheduleRunner(sandbox_aws.scheduler_client(endpoint),
                          sandbox_aws.ec2_client(endpoint), sandbox_aws.iam_client(endpoint),
                          clock=lambda: FAR_FUTURE)
    yield made
    made.close()


# --- the sandbox's own runner, in real time ---------------------------------------------------

def test_the_backstop_role_is_seeded_as_init_creates_it(sandbox: Sandbox) -> None:
    iam = sandbox_aws.iam_client(sandbox.endpoint_url)
    role = iam.get_role(RoleName="bastion-tray-backstop")["Role"]
    assert role["Arn"] == sandbox.backstop_role_arn == \
        "arn:aws:iam::123456789012:role/bastion-tray-backstop"
    assert role["AssumeRolePolicyDocument"] == backstop_trust_policy()
    names = iam.list_role_policies(RoleName="bastion-tray-backstop")["PolicyNames"]
    assert len(names) == 1
    policy = iam.get_role_policy(RoleName="bastion-tray-backstop", PolicyName=names[0])
    assert policy["PolicyDocument"]["Statement"] == [{
        "Effect": "Allow", "Action": "ec2:StopInstances",
        "Resource": f"arn:aws:ec2:{sandbox.region}:123456789012:instance/"
                    f"{sandbox.bastion_instance_id}"}]


def test_a_due_backstop_stops_the_running_bastion_and_is_deleted(
        bastion: Sandbox, schedules: Schedules) -> None:
    sb = bastion
    name = SCHEDULE_PREFIX + sb.bastion_instance_id
    expression = schedules.create(name, time.time() - 1)

    run = schedules.wait_run(name, expression)
    assert run.ok, run.failure
    assert run.instance_ids == (sb.bastion_instance_id,)
    wait_state(sb, "stopped")
    sb.wait_bastion_ssh(False, 5)
    assert wait_for(lambda: not exists(sb, name), timeout=RUN_TIMEOUT), sb.schedules()


def test_a_schedule_in_the_future_runs_only_once_due(bastion: Sandbox,
                                                     schedules: Schedules) -> None:
    sb = bastion
    name = SCHEDULE_PREFIX + sb.bastion_instance_id
    due = float(int(time.time()) + 3)  # whole seconds, as at() has them: 2 to 3 s ahead
    expression = schedules.create(name, due)

    while time.time() < due - 0.3:
        assert schedules.runs(name, expression) == [], "ran before it was due"
        assert sb.instance_state() == "running"
        time.sleep(0.1)
    run = schedules.wait_run(name, expression, timeout=RUN_TIMEOUT + 1)
    assert run.ok, run.failure
    assert run.at >= due
    wait_state(sb, "stopped")
    sb.wait_bastion_ssh(False, 5)


def test_schedules_of_other_names_or_targets_are_left_alone(bastion: Sandbox,
                                                            schedules: Schedules) -> None:
    sb = bastion
    now = time.time() - 1
    other_name = f"other-{sb.bastion_instance_id}"
    other_target = SCHEDULE_PREFIX + sb.bastion_instance_id
    disabled = f"{SCHEDULE_PREFIX}disabled-{uuid.uuid4().hex[:8]}"
    schedules.create(other_name, now)
    schedules.create(other_target, now, target_arn="arn:aws:scheduler:::aws-sdk:ec2:startInstances")
    schedules.create(disabled, now, state="DISABLED")

    schedules.sentinel()
    assert [run.name for run in schedules.runs()
            if run.name in {other_name, other_target, disabled}] == []
    assert sb.instance_state() == "running" and sb.bastion_ssh_up()
    assert {other_target, disabled} <= set(sb.schedules())
    assert other_name in [s["Name"] for s in schedules.client.list_schedules()["Schedules"]]


@pytest.mark.parametrize("role_kind", ["missing", "not trusting scheduler"])
def test_a_role_scheduler_cannot_assume_fails_and_the_bastion_keeps_running(
        bastion: Sandbox, schedules: Schedules, role_kind: str) -> None:
    sb = bastion
    iam = sandbox_aws.iam_client(sb.endpoint_url)
    role, role_name = missing_role(), ""
    if role_kind == "not trusting scheduler":
        role_name = f"bastion-tray-ec2-trusted-{uuid.uuid4().hex[:8]}"
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole"}]}
        role = iam.create_role(RoleName=role_name,
                               AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    try:
        name = SCHEDULE_PREFIX + sb.bastion_instance_id
        expression = schedules.create(name, time.time() - 1, role=role)

        run = schedules.wait_run(name, expression)
        assert not run.ok
        assert role in (run.failure or "")
        assert ("does not exist" if role_kind == "missing" else "scheduler.amazonaws.com") \
            in (run.failure or "")
        assert sb.instance_state() == "running" and sb.bastion_ssh_up()
        # one-time: complete after its one invocation, failed or not
        assert wait_for(lambda: not exists(sb, name), timeout=RUN_TIMEOUT), sb.schedules()
    finally:
        if role_name:
            iam.delete_role(RoleName=role_name)


def test_a_schedule_kept_after_completion_does_not_run_twice(bastion: Sandbox,
                                                             schedules: Schedules) -> None:
    sb = bastion
    name = SCHEDULE_PREFIX + sb.bastion_instance_id
    expression = schedules.create(name, time.time() - 1, after="NONE")
    assert schedules.wait_run(name, expression).ok
    wait_state(sb, "stopped")
    sb.wait_bastion_ssh(False, 5)

    sb.ec2().start_instances(InstanceIds=[sb.bastion_instance_id])
    sb.wait_bastion_ssh(True, sb.boot_delay + 10)
    schedules.sentinel()
    assert len(schedules.runs(name, expression)) == 1
    assert exists(sb, name)
    assert sb.instance_state() == "running"


# --- step() with an injected clock ------------------------------------------------------------

def test_step_runs_a_schedule_exactly_when_it_is_due(fresh_sandbox: Sandbox,
                                                     schedules: Schedules) -> None:
    sb = fresh_sandbox
    endpoint = sb.endpoint_url
    now = [FAR_FUTURE - 1.0]
    runner = ScheduleRunner(sandbox_aws.scheduler_client(endpoint),
                            sandbox_aws.ec2_client(endpoint), sandbox_aws.iam_client(endpoint),
                            clock=lambda: now[0])
    name = SCHEDULE_PREFIX + sb.bastion_instance_id
    expression = schedules.create(name, FAR_FUTURE)
    sb.ec2().start_instances(InstanceIds=[sb.bastion_instance_id])

    assert [run.name for run in runner.step()] == []
    now[0] = FAR_FUTURE
    (run,) = [run for run in runner.step() if run.name == name]
    assert (run.at, run.expression, run.instance_ids, run.ok) == (
        FAR_FUTURE, expression, (sb.bastion_instance_id,), True)
    assert sb.instance_state() == "stopped"
    assert not exists(sb, name)
    assert runner.runs() == [run]
    assert schedules.runs(name, expression) == []  # the sandbox's own runner never saw it due


def test_step_does_not_run_a_kept_schedule_twice_but_runs_it_again_when_moved(
        sandbox: Sandbox, schedules: Schedules, runner: ScheduleRunner) -> None:
    name = f"{SCHEDULE_PREFIX}kept-{uuid.uuid4().hex[:8]}"
    unknown = "i-0123456789abcdef0"  # not in moto: the invocation fails, nothing stops
    expression = schedules.create(name, FAR_FUTURE - 60, after="NONE", instance_id=unknown)

    first = [run for run in runner.step() if run.name == name]
    assert [(run.expression, run.ok) for run in first] == [(expression, False)]
    assert "InvalidInstanceID.NotFound" in (first[0].failure or "")
    assert [run for run in runner.step() if run.name == name] == []
    assert exists(sandbox, name)

    # the daemon pushes the time: a new one-time invocation, due again at the new time
    moved = at_expression(FAR_FUTURE - 30)
    current = schedules.client.get_schedule(Name=name, GroupName="default")
    schedules.client.update_schedule(
        Name=name, GroupName="default", ScheduleExpression=moved,
        ScheduleExpressionTimezone="UTC", FlexibleTimeWindow={"Mode": "OFF"},
        Target=current["Target"], ActionAfterCompletion="NONE", State="ENABLED")
    assert [run.expression for run in runner.step() if run.name == name] == [moved]


def test_step_records_an_input_it_cannot_play_as_a_failure(
        sandbox: Sandbox, schedules: Schedules, runner: ScheduleRunner) -> None:
    name = f"{SCHEDULE_PREFIX}bad-input-{uuid.uuid4().hex[:8]}"
    schedules.create(name, FAR_FUTURE - 60)
    current = schedules.client.get_schedule(Name=name, GroupName="default")
    schedules.client.update_schedule(
        Name=name, GroupName="default", ScheduleExpression=current["ScheduleExpression"],
        FlexibleTimeWindow={"Mode": "OFF"},  # no State: moto stores None, AWS ENABLED
        Target={**current["Target"], "Input": '{"InstanceIds": "i-1"}'})

    (run,) = [run for run in runner.step() if run.name == name]
    assert run.instance_ids == () and "InstanceIds" in (run.failure or "")
    assert sandbox.instance_state() == "stopped"


def test_step_skips_schedules_that_are_not_one_time_in_utc(
        sandbox: Sandbox, schedules: Schedules, runner: ScheduleRunner) -> None:
    recurring = f"{SCHEDULE_PREFIX}rate-{uuid.uuid4().hex[:8]}"
    schedules.client.create_schedule(
        Name=recurring, GroupName="default", ScheduleExpression="rate(1 minute)",
        FlexibleTimeWindow={"Mode": "OFF"},
        Target={"Arn": STOP_TARGET_ARN, "RoleArn": sandbox.backstop_role_arn,
                "Input": stop_input(sandbox.bastion_instance_id)})
    schedules.created.append(recurring)
    zoned = f"{SCHEDULE_PREFIX}tokyo-{uuid.uuid4().hex[:8]}"
    schedules.client.create_schedule(
        Name=zoned, GroupName="default", ScheduleExpression="at(2020-01-01T00:00:00)",
        ScheduleExpressionTimezone="Asia/Tokyo", FlexibleTimeWindow={"Mode": "OFF"},
        Target={"Arn": STOP_TARGET_ARN, "RoleArn": sandbox.backstop_role_arn,
                "Input": stop_input(sandbox.bastion_instance_id)})
    schedules.created.append(zoned)

    assert [run for run in runner.step() if run.name in {recurring, zoned}] == []
    assert {recurring, zoned} <= set(sandbox.schedules())


class BusyOnce:
    """An EC2 client whose first StopInstances gets moto's 500, as when it is busy."""

    def __init__(self, ec2: Any) -> None:
        self._ec2 = ec2
        self.calls = 0

    def stop_instances(self, **params: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "busy"},
                               "ResponseMetadata": {"HTTPStatusCode": 500}}, "StopInstances")
        return self._ec2.stop_instances(**params)


def test_step_leaves_a_busy_moto_to_the_next_poll(sandbox: Sandbox,
                                                   schedules: Schedules) -> None:
    endpoint = sandbox.endpoint_url
    ec2 = BusyOnce(sandbox_aws.ec2_client(endpoint))
    runner = ScheduleRunner(sandbox_aws.scheduler_client(endpoint), ec2,
                            sandbox_aws.iam_client(endpoint), clock=lambda: FAR_FUTURE)
    name = f"{SCHEDULE_PREFIX}busy-{uuid.uuid4().hex[:8]}"
    schedules.create(name, FAR_FUTURE - 60, instance_id="i-0123456789abcdef0")

    with pytest.raises(ClientError):
        runner.step()
    assert runner.runs() == [] and exists(sandbox, name)
    (run,) = [run for run in runner.step() if run.name == name]
    assert "InvalidInstanceID.NotFound" in (run.failure or "")
    assert ec2.calls == 2 and not exists(sandbox, name)


def test_the_runner_thread_ends_at_close(sandbox: Sandbox) -> None:
    endpoint = sandbox.endpoint_url
    with ScheduleRunner(sandbox_aws.scheduler_client(endpoint), sandbox_aws.ec2_client(endpoint),
                        sandbox_aws.iam_client(endpoint), clock=lambda: 0.0) as runner:
        runner.start()
        assert runner.thread.is_alive()
    assert not runner.thread.is_alive()


# --- the pure parts -----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "ids"), [
    ('{"InstanceIds": ["i-1", "i-2"]}', ("i-1", "i-2")),
    ('{"InstanceIds": []}', ()),
    ('{"InstanceIds": "i-1"}', ()),
    ('{"InstanceIds": ["i-1"], "Force": true}', ()),
    ("not json", ()),
    (None, ()),
])
def test_instance_ids_from_the_target_input(text: str | None, ids: tuple[str, ...]) -> None:
    found, problem = instance_ids_from(text)
    assert found == ids
    assert (problem is None) == bool(ids)


def _trust(**statement: Any) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", **statement}]}


def test_trusts_scheduler_reads_the_trust_policy() -> None:
    scheduler = {"Service": "scheduler.amazonaws.com"}
    assert trusts_scheduler(backstop_trust_policy())
    assert trusts_scheduler(_trust(Principal={"Service": ["ec2.amazonaws.com",
                                                          "scheduler.amazonaws.com"]},
                                   Action=["sts:TagSession", "sts:*"]))
    assert trusts_scheduler('{"Statement": {"Effect": "Allow", "Principal": {"Service": '
                            '"scheduler.amazonaws.com"}, "Action": "sts:AssumeRole"}}')
    assert not trusts_scheduler(_trust(Principal={"Service": "ec2.amazonaws.com"},
                                       Action="sts:AssumeRole"))
    assert not trusts_scheduler(_trust(Principal=scheduler, Action="sts:TagSession"))
    denied = backstop_trust_policy()
    denied["Statement"].append({"Effect": "Deny", "Principal": scheduler, "Action": "sts:*"})
    assert not trusts_scheduler(denied)
    assert not trusts_scheduler(None)
    assert not trusts_scheduler("%7Bnot json")
