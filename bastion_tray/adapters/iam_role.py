"""The backstop's IAM role: one that EventBridge Scheduler may assume to stop the bastion.

`bastion-tray init` offers to create it. The role trusts scheduler.amazonaws.com only, and only
for schedules of this account (aws:SourceAccount, as AWS's Scheduler docs recommend against the
confused deputy); each bastion gets one inline policy, `bastion-tray-stop-<instance-id>`, that
allows ec2:StopInstances on that instance's ARN and nothing else. An existing role of that name
is reused once its trust policy is checked; the policy for this instance is (re)put either way.

IAM is a global service: the session must carry botocore's full data (discovery.init_session),
not the daemon's trimmed endpoints, which know nothing of IAM's global endpoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from bastion_tray.adapters.cloud import ApiLimits, uses_sso
from bastion_tray.adapters.cloud_errors import translate
from bastion_tray.core.config import BastionConfig, Profile
from bastion_tray.core.errors import CloudError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_ROLE_NAME = "bastion-tray-backstop"
SCHEDULER_PRINCIPAL = "scheduler.amazonaws.com"
POLICY_PREFIX = "bastion-tray-stop-"
ROLE_DESCRIPTION = ("bastion-tray: lets EventBridge Scheduler stop a bastion when no "
                    "bastion-tray daemon uses it any more")
#: the partitions whose regions carry a prefix; every other region is in "aws"
_PARTITIONS = (("cn-", "aws-cn"), ("us-gov-", "aws-us-gov"), ("us-isob-", "aws-iso-b"),
               ("us-iso-", "aws-iso"))


@dataclass(frozen=True)
class BackstopRole:
    """What init created or reused, for it to print and write."""

    arn: str
    name: str
    created: bool  # False: the role was there already (its trust policy checked)
    policy_name: str  # the inline policy for this instance
    instance_arn: str  # the one resource its permission names
    account: str

    @property
    def permission(self) -> str:
        return f"ec2:StopInstances on {self.instance_arn}"


def partition(region: str) -> str:
    return next((p for prefix, p in _PARTITIONS if region.startswith(prefix)), "aws")


def instance_arn(region: str, account: str, instance_id: str) -> str:
    return f"arn:{partition(region)}:ec2:{region}:{account}:instance/{instance_id}"


def policy_name(instance_id: str) -> str:
    return POLICY_PREFIX + instance_id


def trust_policy(account: str) -> dict[str, Any]:
    """Scheduler, for schedules of `account` only, may assume the role."""
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow",
        "Principal": {"Service": SCHEDULER_PRINCIPAL},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": account}},
    }]}


def stop_policy(arn: str) -> dict[str, Any]:
    """The role's one permission: stop that instance."""
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "ec2:StopInstances", "Resource": arn}]}


def trusts_scheduler(document: Mapping[str, Any] | str, account: str) -> bool:
    """Whether a trust policy lets Scheduler assume the role for schedules of `account`: an
    Allow of sts:AssumeRole to scheduler.amazonaws.com whose aws:SourceAccount, if it names
    one, is `account`, and no Deny statement at all (too many shapes to judge: refused)."""
    if isinstance(document, str):  # IAM sends it URL-encoded; botocore usually decodes it
        try:
            document = json.loads(unquote(document))
        except ValueError:
            return False
    statements = document.get("Statement", []) if isinstance(document, Mapping) else []
    if isinstance(statements, Mapping):
        statements = [statements]
    if any(isinstance(s, Mapping) and s.get("Effect") == "Deny" for s in statements):
        return False
    return any(isinstance(s, Mapping) and s.get("Effect") == "Allow"
               and SCHEDULER_PRINCIPAL in _strings((s.get("Principal") or {}).get("Service"))
               and "sts:AssumeRole" in _strings(s.get("Action"))
               and _source_accounts(s) <= {account} for s in statements)


def account_id(session: boto3.session.Session, *, profile: Profile | None = None,
               limits: ApiLimits | None = None) -> str:
    """The AWS account of the session's credentials (sts:GetCallerIdentity, which IAM policies
    cannot deny)."""
    return _Iam(session, profile, limits).account()


def provision_backstop_role(session: boto3.session.Session, *, instance_arn: str,
                            role_name: str = DEFAULT_ROLE_NAME, profile: Profile | None = None,
                            limits: ApiLimits | None = None) -> BackstopRole:
    """Create the role (or reuse it, its trust checked) and put the instance's policy.

    `profile` only words the messages (region, AWS profile); default: the session's.
    Raises CloudError: a missing permission names iam:CreateRole / iam:PutRolePolicy and says
    to ask an administrator; a role of that name that Scheduler may not assume is refused.
    """
    return _Iam(session, profile, limits).provision(instance_arn, role_name)


def create_backstop_role(session: boto3.session.Session, *, instance_arn: str,
                         role_name: str = DEFAULT_ROLE_NAME) -> str:
    """provision_backstop_role, for its ARN only."""
    return provision_backstop_role(session, instance_arn=instance_arn, role_name=role_name).arn


class _Iam:
    """The few IAM and STS calls, each translated at the edge."""

    def __init__(self, session: boto3.session.Session, profile: Profile | None,
                 limits: ApiLimits | None) -> None:
        self._session = session
        self._profile = profile or _profile_of(session)
        self._limits = limits or ApiLimits()
        self._clients: dict[str, Any] = {}

    def account(self) -> str:
        reply = self._call("sts", "GetCallerIdentity", None,
                           lambda sts: sts.get_caller_identity())
        return str(reply["Account"])

    def provision(self, arn: str, role_name: str) -> BackstopRole:
        parts = arn.split(":", 5)
        if len(parts) != 6 or parts[2] != "ec2" or not parts[5].startswith("instance/i-"):
            raise ValueError(f"not an EC2 instance ARN: {arn!r}")
        account, instance_id = parts[4], parts[5].removeprefix("instance/")
        trust = json.dumps(trust_policy(account))
        created = True
        try:
            reply = self._call("iam", "CreateRole", role_name, lambda iam: iam.create_role(
                RoleName=role_name, AssumeRolePolicyDocument=trust,
                Description=ROLE_DESCRIPTION), exists_ok=True)
            role = reply["Role"]
        except _Exists:
            created = False
            role = self._call("iam", "GetRole", role_name,
                              lambda iam: iam.get_role(RoleName=role_name))["Role"]
            if not trusts_scheduler(role.get("AssumeRolePolicyDocument") or {}, account):
                raise CloudError(
                    f"the IAM role {role_name} exists, but its trust policy does not let "
                    f"{SCHEDULER_PRINCIPAL} assume it for account {account}",
                    hint=f"give it the trust policy {trust} (aws iam update-assume-role-policy "
                         f"--role-name {role_name} --policy-document '…'), or pass another "
                         "role's ARN: --backstop-role arn:aws:iam::…") from None
        name = policy_name(instance_id)
        self._call("iam", "PutRolePolicy", role_name, lambda iam: iam.put_role_policy(
            RoleName=role_name, PolicyName=name, PolicyDocument=json.dumps(stop_policy(arn))))
        log.info("[init] %s IAM role %s with %s", "created" if created else "reused",
                 role_name, name)
        return BackstopRole(str(role["Arn"]), role_name, created, name, arn, account)

    def _call(self, service: str, action: str, subject: str | None,
              call: Callable[[Any], T], *, exists_ok: bool = False) -> T:
        try:
            return call(self._client(service))
        except (ClientError, BotoCoreError) as exc:
            if exists_ok and isinstance(exc, ClientError) and \
                    exc.response.get("Error", {}).get("Code") == "EntityAlreadyExists":
                raise _Exists from exc
            raise translate(exc, action, self._profile, subject=subject,
                            uses_sso=uses_sso(self._session)) from exc

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self._session.client(
                service, config=self._limits.client_config())
        return self._clients[service]


class _Exists(Exception):
    """CreateRole: a role of that name is there already."""


def _profile_of(session: boto3.session.Session) -> Profile:
    """A Profile for translate()'s wording: the session's region and named AWS profile."""
    named = session.profile_name if session.profile_name != "default" else None
    return Profile(name="init", region=session.region_name or "us-east-1", aws_profile=named,
                   bastion=BastionConfig(instance_id=None, name="<any>", user="ec2-user",
                                         identity_file=None))


def _strings(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, list | tuple):
        return {v for v in value if isinstance(v, str)}
    return set()


def _source_accounts(statement: Mapping[str, Any]) -> set[str]:
    """Every aws:SourceAccount a statement's conditions name (any operator, any case)."""
    found: set[str] = set()
    conditions = statement.get("Condition") or {}
    for block in conditions.values() if isinstance(conditions, Mapping) else ():
        if isinstance(block, Mapping):
            for key, value in block.items():
                if str(key).lower() == "aws:sourceaccount":
                    found |= _strings(value)
    return found
