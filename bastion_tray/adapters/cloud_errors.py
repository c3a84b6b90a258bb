"""botocore errors → CloudError / CredentialsError that say what failed and what to do.

`translate()` is the single place where that happens. It is pure data in, error out (it reads
AWS_PROFILE to name the profile in a hint, nothing else), so tests feed it hand-built botocore
exceptions; the adapters call it at the edge of every AWS call: EC2 (cloud.py), EventBridge
Scheduler (backstop.py), IAM and STS (iam_role.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    HTTPClientError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from bastion_tray.core.config import Profile
from bastion_tray.core.errors import CloudError, CredentialsError
from bastion_tray.core.team import schedule_name

NOT_FOUND = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})
DENIED = frozenset({"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"})
EXPIRED = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired"})
#: the key pair itself is refused (deleted access key, wrong secret, typo)
REJECTED = frozenset({"AuthFailure", "InvalidClientTokenId", "UnrecognizedClientException",
                      "SignatureDoesNotMatch"})
#: botocore retries these itself (standard retry mode); seen here only once retries ran out
THROTTLED = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException"})

#: botocore exceptions (by class name, anywhere in the MRO) that mean "no usable credentials".
#: By name because some (Login*) exist only in newer botocore releases.
_CREDENTIAL_CLASSES = frozenset({
    "NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
    "TokenRetrievalError", "NoAuthTokenError", "ProfileNotFound", "SSOError", "LoginError",
    "RefreshWithMFAUnsupportedError",
})
_SSO_CLASSES = frozenset({"SSOError", "SSOTokenLoadError", "UnauthorizedSSOTokenError"})
#: the SSO portal's own call, made while resolving SSO credentials
_SSO_OPERATIONS = frozenset({"GetRoleCredentials"})



@dataclass(frozen=True)
class _Service:
    prefix: str  # of its IAM actions: "ec2" in ec2:StartInstances
    label: str  # in messages: "the EC2 API"
    endpoint_env: str  # the variable that points boto3 at another endpoint for it only


_EC2 = _Service("ec2", "EC2", "AWS_ENDPOINT_URL_EC2")
_SERVICES = {s.prefix: s for s in (
    _EC2,
    _Service("scheduler", "EventBridge Scheduler", "AWS_ENDPOINT_URL_SCHEDULER"),
    _Service("iam", "IAM", "AWS_ENDPOINT_URL_IAM"),
    _Service("sts", "STS", "AWS_ENDPOINT_URL_STS"),
)}

#: action → (its service, what it does in the words of a message). {target} is the instance the
#: call was about (for IAM calls: the role), {schedule} that instance's backstop schedule. An
#: action not listed is taken for EC2's, worded "<action> instance <target>".
_DOING = {
    "DescribeInstances": ("ec2", "describe instance {target}"),
    "DescribeAddresses": ("ec2", "look up the Elastic IP of instance {target}"),
    "StartInstances": ("ec2", "start instance {target}"),
    "StopInstances": ("ec2", "stop instance {target}"),
    "CreateTags": ("ec2", "tag instance {target} with a lease"),
    "DeleteTags": ("ec2", "remove a lease tag from instance {target}"),
    "DescribeSecurityGroups": ("ec2", "read the security groups of {target}"),
    "AuthorizeSecurityGroupIngress": ("ec2", "open the SSH port to this machine on {target}"),
    "UpdateSecurityGroupRuleDescriptionsIngress": (
        "ec2", "renew this machine's SSH rule on {target}"),
    "RevokeSecurityGroupIngress": ("ec2", "revoke a bastion-tray SSH rule on {target}"),
    "GetSchedule": ("scheduler", "read the backstop schedule {schedule}"),
    "CreateSchedule": ("scheduler", "create the backstop schedule {schedule}"),
    "UpdateSchedule": ("scheduler", "push back the backstop schedule {schedule}"),
    "DeleteSchedule": ("scheduler", "delete the backstop schedule {schedule}"),
    "GetCallerIdentity": ("sts", "look up the AWS account of these credentials"),
    "CreateRole": ("iam", "create the IAM role {target}"),
    "GetRole": ("iam", "read the IAM role {target}"),
    "PutRolePolicy": ("iam", "give the IAM role {target} its permission"),
}
#: creating the backstop role: denied, it is an administrator's job (the README says how)
_ROLE_CREATION = frozenset({"CreateRole", "PutRolePolicy"})
_POLICY_HINT = "the README's IAM policy lists every action bastion-tray needs"


def login_profile(profile: Profile) -> str:
    """The AWS profile boto3 uses for `profile`: aws_profile, else $AWS_PROFILE, else default."""
    return (profile.aws_profile or os.environ.get("AWS_PROFILE")
            or os.environ.get("AWS_DEFAULT_PROFILE") or "default")


def where(profile: Profile) -> str:
    """'ap-northeast-1 (AWS profile foo)': the region and credentials a call used."""
    if profile.aws_profile:
        creds = f"AWS profile {profile.aws_profile}"
    elif os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE"):
        creds = f"AWS profile {login_profile(profile)} from the environment"
    else:
        creds = "default AWS credentials"
    return f"{profile.region} ({creds})"


def credentials_hint(profile: Profile, uses_sso: bool) -> str:
    name = login_profile(profile)
    if uses_sso:
        return f"run: aws sso login --profile {name}"
    return f"configure credentials: aws configure --profile {name}, or set AWS_PROFILE"


def instance_not_found(profile: Profile, instance_id: str, code: str) -> CloudError:
    return CloudError(f"instance {instance_id} not found in region {where(profile)}: {code}",
                      hint=f"check instance_id in [profiles.{profile.name}.bastion] and the "
                           "profile's region")


def is_denied(exc: BaseException | None) -> bool:
    """Whether `exc` is a ClientError saying the credentials lack an IAM permission."""
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in DENIED


def translate(exc: BaseException, action: str, profile: Profile, *,
              instance_id: str | None = None, subject: str | None = None,
              uses_sso: bool = False, state: str | None = None,
              elapsed: float | None = None) -> CloudError:
    """The CloudError (or CredentialsError) to raise for `exc`, raised by `action`.

    `action` is the AWS operation ("StartInstances", "CreateSchedule", "CreateRole"; _DOING
    knows its service); `instance_id` the instance it was about (default: the configured id or
    Name); `subject` what it was about when that is not an instance (an IAM role's name);
    `uses_sso` whether the AWS profile logs in through IAM Identity Center; `state` the
    instance's state when known (for IncorrectInstanceState); `elapsed` the seconds the call
    took, retries included (said when the endpoint hung).
    """
    target = subject or instance_id or profile.bastion.label
    service, doing = _doing(action, target)
    uses_sso = uses_sso or _is_sso_error(exc)

    if isinstance(exc, ClientError):
        return _client_error(exc, action, service, profile, target, doing, uses_sso, state)
    names = _class_names(exc)
    if names & _CREDENTIAL_CLASSES:
        return _credentials_error(exc, names, profile, doing, uses_sso)
    # ConnectionError: EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError, SSL;
    # HTTPClientError: ReadTimeoutError, ConnectionClosedError
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        kwargs = getattr(exc, "kwargs", {})
        url = _endpoint_of(kwargs.get("endpoint_url") or kwargs.get("proxy_url"))
        hint = (f"check the network/VPN and the region ({profile.region}); AWS_ENDPOINT_URL "
                f"and {service.endpoint_env}, when set, choose the endpoint instead")
        # the endpoint hung rather than refused: a proxy, a captive portal, a dead VPN route
        if isinstance(exc, ReadTimeoutError | ConnectTimeoutError):
            how = ("connected, no reply" if isinstance(exc, ReadTimeoutError)
                   else "no connection")
            after = f"; gave up after {elapsed:.0f} s" if elapsed is not None else ""
            return CloudError(f"the {service.label} API at {url} did not answer the request "
                              f"to {doing} ({how}{after})", hint=hint)
        return CloudError(f"cannot reach the {service.label} API at {url} to {doing}: {exc}",
                          hint=hint)
    if isinstance(exc, BotoCoreError):
        return CloudError(f"could not {doing} in {where(profile)}: {exc}")
    return CloudError(f"could not {doing} in {where(profile)}: {type(exc).__name__}: {exc}")


def _doing(action: str, target: str) -> tuple[_Service, str]:
    prefix, words = _DOING.get(action, ("ec2", f"{action} instance {{target}}"))
    return _SERVICES[prefix], words.format(target=target, schedule=schedule_name(target))


def _client_error(exc: ClientError, action: str, service: _Service, profile: Profile,
                  target: str, doing: str, uses_sso: bool, state: str | None) -> CloudError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    aws_message = _first_line(str(error.get("Message", "")))
    here = where(profile)

    if code in NOT_FOUND:
        return instance_not_found(profile, target, code)
    if exc.operation_name in _SSO_OPERATIONS or code in EXPIRED:
        reason = ("the SSO login has expired" if uses_sso
                  else "the AWS credentials have expired")
        if code == "RequestExpired" and not uses_sso:
            reason += " (or this computer's clock is off)"
        return CredentialsError(f"could not {doing}: {reason} ({code}: {aws_message})",
                                hint=credentials_hint(profile, uses_sso))
    if code in REJECTED:
        return CredentialsError(f"could not {doing}: AWS rejected the credentials of {here} "
                                f"({code}: {aws_message})",
                                hint=credentials_hint(profile, uses_sso))
    if code in DENIED:
        return _denied(action, service, doing, here, aws_message or code)
    if code == "IncorrectInstanceState":
        it_is = f"it is {state}" if state else aws_message
        return CloudError(f"cannot {doing}: {it_is}", hint=_state_hint(state))
    if code in THROTTLED:
        attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts")
        tries = f" after {int(attempts) + 1} attempts" if attempts is not None else ""
        return CloudError(f"{service.label} throttled the request to {doing}{tries} ({code})",
                          hint=f"too many {service.label} API calls in this account right "
                               "now; try again in a minute")
    if service.prefix == "scheduler" and code == "ValidationException":
        # what Scheduler answers when it may not assume the target's role: a backstop_role
        # that does not trust scheduler.amazonaws.com, or one IAM has not spread yet
        return CloudError(f"EventBridge Scheduler refused to {doing}: {aws_message or code}",
                          hint="the backstop is off until this is fixed; a backstop_role that "
                               "scheduler.amazonaws.com may not assume is the usual cause (a "
                               "role created a few seconds ago works a little later)")
    if code == "InsufficientInstanceCapacity":
        return CloudError(f"cannot {doing}: AWS has no capacity for its instance type in its "
                          f"availability zone right now ({aws_message})",
                          hint="try again in a few minutes")
    return CloudError(f"could not {doing} in {here}: {code}: {aws_message}")


def _denied(action: str, service: _Service, doing: str, here: str,
            aws_message: str) -> CloudError:
    """A missing IAM permission: the message names it, the hint says what to add."""
    if action in _ROLE_CREATION:
        return CloudError(f"not allowed to create IAM roles (iam:CreateRole, iam:PutRolePolicy) "
                          f"in {here}: {aws_message}",
                          hint="ask an administrator to create it, see the README's IAM section")
    permission = f"{service.prefix}:{action}"
    # CreateSchedule / UpdateSchedule hand the role to Scheduler: that needs iam:PassRole on it,
    # and AWS names it in the message
    if service.prefix == "scheduler" and "iam:PassRole" in aws_message:
        permission = "iam:PassRole"
    message = f"not allowed to call {permission} to {doing} in {here}: {aws_message}"
    if service.prefix == "scheduler":
        what = ('"iam:PassRole" on the backstop_role' if permission == "iam:PassRole"
                else f'"{permission}"')
        return CloudError(message, hint=f"the backstop is off until {what} is added to the IAM "
                                        f"policy of these credentials ({_POLICY_HINT}); idle "
                                        "stops by this daemon still work")
    return CloudError(message, hint=f'add "{permission}" to the IAM policy of these credentials '
                                    f"({_POLICY_HINT})")


def _credentials_error(exc: BaseException, names: frozenset[str], profile: Profile,
                       doing: str, uses_sso: bool) -> CredentialsError:
    if "ProfileNotFound" in names:
        name = str(getattr(exc, "kwargs", {}).get("profile") or login_profile(profile))
        chosen_by = (f"aws_profile in [profiles.{profile.name}]" if profile.aws_profile
                     else "AWS_PROFILE")
        return CredentialsError(
            f"could not {doing}: AWS profile {name!r} is not in the AWS config files",
            hint=f"create it (aws configure --profile {name}, or aws configure sso --profile "
                 f"{name}), or fix {chosen_by}")
    if "LoginError" in names:
        return CredentialsError(f"could not {doing}: the AWS login session is not usable: {exc}",
                                hint=f"run: aws login --profile {login_profile(profile)}")
    if "NoCredentialsError" in names:
        what = "no AWS credentials were found"
    elif uses_sso:
        what = f"the SSO login is missing or has expired: {exc}"
    else:
        what = f"the AWS credentials could not be loaded: {exc}"
    return CredentialsError(f"could not {doing} in {where(profile)}: {what}",
                            hint=credentials_hint(profile, uses_sso))


def _state_hint(state: str | None) -> str:
    if state in {"terminated", "shutting-down"}:
        return "the instance is gone: point the profile's bastion at a live instance"
    if state == "stopping":
        return "wait until it has stopped, then start it again"
    if state == "pending":
        return "wait until it is running"
    return "try again once the instance is running or stopped"


def _is_sso_error(exc: BaseException) -> bool:
    if _class_names(exc) & _SSO_CLASSES:
        return True
    if isinstance(exc, ClientError):
        return exc.operation_name in _SSO_OPERATIONS
    provider = str(getattr(exc, "kwargs", {}).get("provider", ""))
    return "sso" in provider.lower()


def _endpoint_of(url: object) -> str:
    """The endpoint of a request URL: a REST API's (Scheduler's) names the resource and a
    client token in its path and query, which say nothing about where the API is."""
    if not isinstance(url, str) or not url:
        return "its endpoint"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/" if parts.scheme and parts.netloc else url


def _class_names(exc: BaseException) -> frozenset[str]:
    return frozenset(cls.__name__ for cls in type(exc).__mro__)


def _first_line(text: str, limit: int = 300) -> str:
    """AWS's message, without the encoded blob EC2 appends to UnauthorizedOperation."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = line.split(" Encoded authorization failure message", 1)[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"
