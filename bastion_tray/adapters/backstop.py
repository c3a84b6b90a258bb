"""The backstop: EventBridge Scheduler's one-time schedule that stops a bastion nobody pushed.

DESIGN.md "Teams": while a daemon holds its lease it keeps pushing one schedule per instance,
`bastion-tray-<instance-id>` in group `default`, whose target is Scheduler's own
ec2:StopInstances of that instance; whoever pushes it only ever moves it later. When every
laptop has vanished, nobody pushes, and the cloud stops the bastion itself. Implements
core.ports.Backstop with boto3; the session, client, retries and timeouts are Ec2Cloud's
(cloud.AwsHandle), and every botocore error leaves through
cloud_errors.translate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from bastion_tray.adapters.cloud import AwsHandle
from bastion_tray.adapters.cloud_errors import translate
from bastion_tray.core import team
from bastion_tray.core.errors import CloudError, CredentialsError

log = logging.getLogger(__name__)

T = TypeVar("T")

NOT_FOUND = "ResourceNotFoundException"
CONFLICT = "ConflictException"
#: create → conflict → read → the schedule already gone again (fired or deleted meanwhile):
#: a few rounds settle any such race between teammates; more would mean something is wrong
MAX_ROUNDS = 3
DESCRIPTION = ("bastion-tray backstop: stops {instance_id} when no bastion-tray daemon has "
               "pushed this time back (every laptop gone)")


class SchedulerBackstop(AwsHandle):
    """The backstop schedules of one profile's account and region. Thread-safe; a handle."""

    SERVICE, LABEL = "scheduler", "Scheduler"

    # --- the Backstop protocol ------------------------------------------------------------

    def push(self, instance_id: str, at: float) -> float:
        """Make the schedule fire at max(its time now, `at`); returns that time (epoch s)."""
        role = self._role()
        wanted = _fires_at(at)
        for _ in range(MAX_ROUNDS):
            existing = self._get(instance_id)
            if existing is None:
                try:
                    self._write("CreateSchedule", instance_id, wanted, role)
                except _Conflict:
                    continue  # a teammate created it between our read and our create
                log.info("%s backstop created: fires at %s", self._ctx(instance_id),
                         team.iso_utc(wanted))
                return wanted
            current = team.parse_at_expression(str(existing.get("ScheduleExpression", "")),
                                               existing.get("ScheduleExpressionTimezone"))
            fires = wanted if current is None else max(current, wanted)
            if _request(instance_id, fires, role) == _as_sent(existing):
                log.debug("%s backstop already fires at %s", self._ctx(instance_id),
                          team.iso_utc(fires))
                return fires
            try:
                self._write("UpdateSchedule", instance_id, fires, role)
            except _Gone:
                continue  # fired or deleted between our read and our update: create it
            log.info("%s backstop pushed to %s", self._ctx(instance_id), team.iso_utc(fires))
            return fires
        raise CloudError(f"could not create or push back the backstop schedule "
                         f"{team.schedule_name(instance_id)}: it kept appearing and vanishing "
                         f"({MAX_ROUNDS} rounds)",
                         hint="another program is creating and deleting it; the next push "
                              "tries again")

    def delete(self, instance_id: str) -> None:
        name = team.schedule_name(instance_id)
        try:
            self._call("DeleteSchedule", instance_id, lambda scheduler: scheduler.delete_schedule(
                Name=name, GroupName=team.SCHEDULE_GROUP), absent_ok=True)
        except _Gone:
            log.debug("%s backstop already gone", self._ctx(instance_id))
            return
        log.info("%s backstop deleted", self._ctx(instance_id))

    # --- the calls ------------------------------------------------------------------------

    def _role(self) -> str:
        role = self._profile.bastion.backstop_role
        if not role:
            raise CloudError(f"the backstop of profile {self._profile.name} has no role to stop "
                             "the instance with",
                             hint=f'set backstop_role = "arn:aws:iam::…:role/…" in '
                                  f"[profiles.{self._profile.name}.bastion] (bastion-tray init "
                                  'offers to create one), or backstop = "off"')
        return role

    def _get(self, instance_id: str) -> dict[str, Any] | None:
        name = team.schedule_name(instance_id)
        try:
            reply: dict[str, Any] = self._call(
                "GetSchedule", instance_id, lambda scheduler: scheduler.get_schedule(
                    Name=name, GroupName=team.SCHEDULE_GROUP), absent_ok=True)
        except _Gone:
            return None
        return reply

    def _write(self, action: str, instance_id: str, fires: float, role: str) -> None:
        request = _request(instance_id, fires, role)
        if action == "CreateSchedule":
            self._call(action, instance_id, lambda scheduler: scheduler.create_schedule(
                **request), conflict_ok=True)
        else:
            self._call(action, instance_id, lambda scheduler: scheduler.update_schedule(
                **request), absent_ok=True)

    def _call(self, action: str, instance_id: str, call: Callable[[Any], T], *,
              absent_ok: bool = False, conflict_ok: bool = False) -> T:
        """One Scheduler call; a botocore failure leaves as a translated CloudError, except
        the "absent" / "exists" answers the caller expects (as _Gone / _Conflict)."""
        started = time.monotonic()
        try:
            return call(self._service_client())
        except (ClientError, BotoCoreError) as exc:
            code = (exc.response.get("Error", {}).get("Code")
                    if isinstance(exc, ClientError) else None)
            if absent_ok and code == NOT_FOUND:
                raise _Gone from exc
            if conflict_ok and code == CONFLICT:
                raise _Conflict from exc
            error = translate(exc, action, self._profile, instance_id=instance_id,
                              uses_sso=self._uses_sso(),
                              elapsed=time.monotonic() - started)
            if isinstance(error, CredentialsError):
                self.close()  # a client keeps the credentials it was built with
            raise error from exc

    def _ctx(self, instance_id: str) -> str:
        return f"[profile={self._profile.name} instance={instance_id}]"


class _Gone(Exception):
    """The schedule is not there (ResourceNotFoundException)."""


class _Conflict(Exception):
    """The schedule is already there (ConflictException on create)."""


def _fires_at(at: float) -> float:
    """`at` as the schedule holds it: whole seconds, rounded up (team.at_expression)."""
    parsed = team.parse_at_expression(team.at_expression(at))
    assert parsed is not None  # at_expression writes what parse_at_expression reads
    return parsed


def _request(instance_id: str, fires: float, role: str) -> dict[str, Any]:
    """Every field of the schedule, as the contract has it: UpdateSchedule replaces them all
    (a field left out is reset to its default), so create and update both send this."""
    return {
        "Name": team.schedule_name(instance_id),
        "GroupName": team.SCHEDULE_GROUP,
        "Description": DESCRIPTION.format(instance_id=instance_id),
        "ScheduleExpression": team.at_expression(fires),
        "ScheduleExpressionTimezone": "UTC",
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "Target": {"Arn": team.STOP_TARGET_ARN, "RoleArn": role,
                   "Input": team.stop_input(instance_id)},
        "ActionAfterCompletion": "DELETE",
        "State": "ENABLED",
    }


def _as_sent(schedule: dict[str, Any]) -> dict[str, Any]:
    """A GetSchedule reply cut to the fields _request sends, for "nothing to change"."""
    target = schedule.get("Target") or {}
    return {
        "Name": schedule.get("Name"),
        "GroupName": schedule.get("GroupName"),
        "Description": schedule.get("Description"),
        "ScheduleExpression": schedule.get("ScheduleExpression"),
        "ScheduleExpressionTimezone": schedule.get("ScheduleExpressionTimezone"),
        "FlexibleTimeWindow": schedule.get("FlexibleTimeWindow"),
        "Target": {k: target.get(k) for k in ("Arn", "RoleArn", "Input")},
        "ActionAfterCompletion": schedule.get("ActionAfterCompletion"),
        "State": schedule.get("State"),
    }
