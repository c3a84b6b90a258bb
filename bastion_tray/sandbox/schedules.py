"""Plays the part of EventBridge Scheduler that moto lacks: running the backstop schedules.

moto stores schedules and never invokes them. The runner polls moto's scheduler and invokes each
bastion-tray one-time schedule that is due, as AWS would: it assumes the target's role (the role
must exist in moto's IAM and trust scheduler.amazonaws.com), calls ec2:StopInstances with the
target's input, then applies `ActionAfterCompletion`. Only `bastion-tray-*` schedules in group
`default` with an `at(…)` expression in UTC and the StopInstances target are played; every other
schedule is left alone.

Where AWS differs, on purpose: a flexible time window is ignored (AWS picks a moment inside it,
the sandbox runs at its start); a failed invocation is not retried (AWS retries within the
target's RetryPolicy, then gives up and writes to the dead-letter queue: the sandbox gives up at
once and keeps the failure in its record); the role's permission policy is not evaluated.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

from botocore.exceptions import ClientError

from bastion_tray.adapters import iam_role  # the backstop role exactly as init creates it
from bastion_tray.core.team import (
    SCHEDULE_GROUP,
    SCHEDULE_PREFIX,
    STOP_TARGET_ARN,
    parse_at_expression,
)

log = logging.getLogger(__name__)

SCHEDULER_PRINCIPAL = "scheduler.amazonaws.com"
BACKSTOP_ROLE_NAME = iam_role.DEFAULT_ROLE_NAME
MOTO_ACCOUNT = "123456789012"  # the account moto's IAM reports
_NOT_FOUND = {"ResourceNotFoundException", "NoSuchEntity", "NoSuchEntityException"}
_THROTTLED = {"Throttling", "ThrottlingException", "RequestLimitExceeded"}


@dataclass(frozen=True)
class ScheduleRun:
    """One invocation of a schedule's target, as the sandbox played it."""

    at: float  # epoch seconds (the runner's clock) when the target was invoked
    name: str  # the schedule's name, `bastion-tray-<instance-id>` for a daemon's backstop
    expression: str  # its `at(…)` expression
    instance_ids: tuple[str, ...]  # from the target's input; () when it could not be read
    failure: str | None  # None: StopInstances succeeded; else why the invocation failed

    @property
    def ok(self) -> bool:
        return self.failure is None


class ScheduleRunner:
    """A polling thread over moto's schedules; `step()` is one poll; `close()` stops it.

    The three boto3 clients are the runner's own (it polls in its own thread). `clock` gives epoch
    seconds: `at(…)` expressions are wall-clock times.
    """

    def __init__(self, scheduler: Any, ec2: Any, iam: Any, *, poll_interval: float = 0.25,
                 clock: Callable[[], float] = time.time) -> None:
        self._scheduler = scheduler
        self._ec2 = ec2
        self._iam = iam
        self._poll_interval = poll_interval
        self._clock = clock
        # a one-time schedule runs once: what ran, by name, expression and creation time (a
        # schedule deleted and created again is a new one; one that is moved is due again)
        self._ran: set[tuple[str, str, str]] = set()
        self._runs: list[ScheduleRun] = []
        self._runs_lock = threading.Lock()
        self._step_lock = threading.Lock()  # step() from a test and from the thread: one at a time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandbox-schedule-runner",
                                        daemon=True)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def runs(self) -> list[ScheduleRun]:
        """Every invocation so far, oldest first."""
        with self._runs_lock:
            return list(self._runs)

    def start(self) -> None:
        self._thread.start()

    def step(self) -> list[ScheduleRun]:
        """One poll: invoke every schedule that is due; returns this poll's invocations."""
        with self._step_lock:
            now = self._clock()
            done = []
            for name in self._candidate_names():
                schedule = self._get_schedule(name)
                run = self._consider(schedule, now) if schedule is not None else None
                if run is not None:
                    done.append(run)
            return done

    def _candidate_names(self) -> list[str]:
        """bastion-tray-* schedule names, oldest first (so a schedule created last is seen
        after every schedule that existed before it, in the same poll)."""
        summaries = [s for s in self._list_schedules() if s["Name"].startswith(SCHEDULE_PREFIX)]
        summaries.sort(key=lambda s: (_created(s), s["Name"]))
        return [s["Name"] for s in summaries]

    def _list_schedules(self) -> Iterator[dict[str, Any]]:
        pages = self._scheduler.get_paginator("list_schedules").paginate(
            GroupName=SCHEDULE_GROUP, NamePrefix=SCHEDULE_PREFIX)
        for page in pages:
            yield from page.get("Schedules", [])

    def _get_schedule(self, name: str) -> dict[str, Any] | None:
        # the list's summaries carry no expression, input or role (AWS's neither): read each
        try:
            return dict(self._scheduler.get_schedule(Name=name, GroupName=SCHEDULE_GROUP))
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND:  # deleted since the list
                return None
            raise

    def _consider(self, schedule: dict[str, Any], now: float) -> ScheduleRun | None:
        due = _due_at(schedule)
        if due is None or now < due or not _is_backstop(schedule):
            return None
        key = _run_key(schedule)
        if key in self._ran:
            self._complete(schedule)  # a delete that failed last time
            return None
        run = self._invoke(schedule, now)
        self._ran.add(key)
        with self._runs_lock:
            self._runs.append(run)
        _log_run(run)
        self._complete(schedule)
        return run

    def _invoke(self, schedule: dict[str, Any], now: float) -> ScheduleRun:
        target = schedule.get("Target") or {}
        instance_ids, input_problem = instance_ids_from(target.get("Input"))
        failure = self._role_problem(target.get("RoleArn")) or input_problem
        if failure is None:
            failure = self._stop_instances(instance_ids)
        return ScheduleRun(now, schedule["Name"], schedule["ScheduleExpression"], instance_ids,
                           failure)

    def _role_problem(self, role_arn: object) -> str | None:
        """Why scheduler.amazonaws.com could not assume `role_arn`; None when it could."""
        if not isinstance(role_arn, str) or ":role/" not in role_arn:
            return f"the target's RoleArn {role_arn!r} is not an IAM role ARN"
        try:
            role = self._iam.get_role(RoleName=role_arn.rsplit("/", 1)[1])["Role"]
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND:
                return f"role {role_arn} does not exist"
            raise
        if role.get("Arn") != role_arn:  # the same name under another path
            return f"role {role_arn} does not exist"
        if not trusts_scheduler(role.get("AssumeRolePolicyDocument")):
            return f"role {role_arn} does not let {SCHEDULER_PRINCIPAL} assume it (trust policy)"
        return None

    def _stop_instances(self, instance_ids: tuple[str, ...]) -> str | None:
        try:
            self._ec2.stop_instances(InstanceIds=list(instance_ids))
        except ClientError as exc:
            if _is_transient(exc):  # moto busy: no answer yet, the next poll tries again
                raise
            error = exc.response.get("Error", {})  # EC2 answered: the invocation failed
            return f"ec2:StopInstances failed: {error.get('Code')}: {error.get('Message')}"
        return None

    def _complete(self, schedule: dict[str, Any]) -> None:
        if schedule.get("ActionAfterCompletion") != "DELETE":
            return
        try:
            self._scheduler.delete_schedule(Name=schedule["Name"], GroupName=SCHEDULE_GROUP)
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND:  # someone else deleted it
                return
            raise
        log.info("[sandbox scheduler] %s deleted after completion", schedule["Name"])

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # moto busy or going away: the next poll decides
                log.debug("[sandbox scheduler] poll failed: %s", exc)
            self._stop.wait(self._poll_interval)

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> ScheduleRunner:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _due_at(schedule: dict[str, Any]) -> float | None:
    """When a one-time schedule is due; None for rate/cron or a zone other than UTC."""
    return parse_at_expression(str(schedule.get("ScheduleExpression", "")),
                               schedule.get("ScheduleExpressionTimezone") or "UTC")


def _is_backstop(schedule: dict[str, Any]) -> bool:
    # moto stores State None after an update that omits it, where AWS would store its
    # default, ENABLED
    state = schedule.get("State") or "ENABLED"
    return state == "ENABLED" and (schedule.get("Target") or {}).get("Arn") == STOP_TARGET_ARN


def _created(schedule: dict[str, Any]) -> float:
    created = schedule.get("CreationDate")
    return created.timestamp() if isinstance(created, datetime) else 0.0


def _run_key(schedule: dict[str, Any]) -> tuple[str, str, str]:
    return (schedule["Name"], schedule["ScheduleExpression"],
            str(schedule.get("CreationDate", "")))


def _log_run(run: ScheduleRun) -> None:
    ids = ", ".join(run.instance_ids) or "no instance"
    if run.ok:
        log.info("[sandbox scheduler] %s %s: stopped %s", run.name, run.expression, ids)
    else:
        log.info("[sandbox scheduler] %s %s: failed (%s): %s", run.name, run.expression, ids,
                 run.failure)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _is_transient(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return int(status or 0) >= 500 or _error_code(exc) in _THROTTLED


def instance_ids_from(target_input: object) -> tuple[tuple[str, ...], str | None]:
    """The instance ids in a StopInstances target's input, and why it is unusable (or None)."""
    expected = 'expected {"InstanceIds": ["i-…"]}'
    try:
        params = json.loads(target_input) if isinstance(target_input, str) else None
    except ValueError:
        params = None
    if not isinstance(params, dict):
        return (), f"the target's Input is not a JSON object: {expected}"
    ids = params.get("InstanceIds")
    if set(params) != {"InstanceIds"} or not isinstance(ids, list) or not ids \
            or not all(isinstance(each, str) for each in ids):
        return (), f"the target's Input {target_input!r} is not what the sandbox plays: {expected}"
    return tuple(ids), None


def trusts_scheduler(document: object) -> bool:
    """Whether a role's trust policy lets scheduler.amazonaws.com call sts:AssumeRole.

    Conditions are not evaluated; an explicit Deny wins over an Allow.
    """
    if isinstance(document, str):  # IAM hands it URL-encoded; boto3 usually decodes it
        try:
            document = json.loads(urllib.parse.unquote(document))
        except ValueError:
            return False
    statements = document.get("Statement", []) if isinstance(document, dict) else []
    if isinstance(statements, dict):
        statements = [statements]
    matching = [s for s in statements if isinstance(s, dict) and _grants_scheduler_assume(s)]
    effects = {s.get("Effect") for s in matching}
    return "Allow" in effects and "Deny" not in effects


def _grants_scheduler_assume(statement: dict[str, Any]) -> bool:
    principal = statement.get("Principal")
    if principal != "*":
        services = principal.get("Service") if isinstance(principal, dict) else None
        if SCHEDULER_PRINCIPAL not in _as_list(services):
            return False
    return any(fnmatch.fnmatchcase("sts:assumerole", str(action).lower())
               for action in _as_list(statement.get("Action")))


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


# --- the backstop role, as `bastion-tray init` creates it --------------------------------------

def backstop_trust_policy() -> dict[str, Any]:
    """Who may assume the backstop role: init's own document (Scheduler, this account)."""
    return iam_role.trust_policy(MOTO_ACCOUNT)


def seed_backstop_role(iam: Any, region: str, bastion_id: str) -> str:
    """Create `bastion-tray-backstop` in moto's IAM for the bastion; returns the role's ARN."""
    role = iam.create_role(RoleName=BACKSTOP_ROLE_NAME,
                           AssumeRolePolicyDocument=json.dumps(backstop_trust_policy()),
                           Description="bastion-tray backstop: EventBridge Scheduler stops the "
                                       "bastion")["Role"]
    arn = str(role["Arn"])
    account = arn.split(":")[4]  # moto's account (123456789012), as IAM itself reports it
    instance = iam_role.instance_arn(region, account, bastion_id)
    iam.put_role_policy(RoleName=BACKSTOP_ROLE_NAME, PolicyName=iam_role.policy_name(bastion_id),
                        PolicyDocument=json.dumps(iam_role.stop_policy(instance)))
    return arn
