"""`init`'s backstop role: created now (adapters/iam_role.py), given as an ARN, or none — and
when it can't be created, the role an administrator can make instead."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from bastion_tray.cli.prompter import Prompter
from bastion_tray.core.errors import CloudError

if TYPE_CHECKING:
    from bastion_tray.adapters import discovery as dv


def backstop_role(args: argparse.Namespace, prompt: Prompter, region: str,
                   bastion: dv.FoundInstance, name: str) -> str | None:
    """The backstop_role to write: created now, given, or None (the backstop stays off)."""
    from bastion_tray.adapters import discovery as dv
    from bastion_tray.adapters import iam_role

    choice = args.backstop_role
    if choice is None and not prompt.interactive:
        print("note: no backstop role (--backstop-role create|ARN): if every laptop using the "
              "bastion vanishes, nothing stops it; idle stops by the daemon still work",
              file=sys.stderr)
        return None
    if choice is None:
        choice = "create" if prompt.confirm(
            f"Create an IAM role so EventBridge Scheduler can stop {bastion.instance_id} when "
            "every laptop is gone?", default=True) else "none"
    if choice != "create":
        return None if choice == "none" else str(choice)
    if args.dry_run:
        print(f"(--dry-run: the IAM role {iam_role.DEFAULT_ROLE_NAME} is not created)")
        return None
    search = dv.search_profile(region, args.aws_profile)
    session = dv.init_session(search)
    account = None
    try:
        account = iam_role.account_id(session, profile=search)
        role = iam_role.provision_backstop_role(
            session, instance_arn=iam_role.instance_arn(region, account, bastion.instance_id),
            profile=search)
    except CloudError as exc:
        explain_missing_role(exc, region, account, bastion.instance_id, name)
        return None
    print(f"{'created' if role.created else 'reusing'} IAM role {role.name}\n"
          f"  ARN: {role.arn}\n"
          f"  trusted by: {iam_role.SCHEDULER_PRINCIPAL}, for schedules of account "
          f"{role.account}{'' if role.created else ' (its trust policy checked)'}\n"
          f"  its one permission: {role.permission} (inline policy {role.policy_name})")
    return role.arn


def explain_missing_role(exc: CloudError, region: str, account: str | None, instance_id: str,
                          profile: str) -> None:
    """Why there is no role, and the role an administrator can make instead."""
    from bastion_tray.adapters import iam_role

    account = account or "ACCOUNT-ID"
    arn = iam_role.instance_arn(region, account, instance_id)
    print(f"note: no backstop role was created: {exc}\n"
          f"  what to ask for: an IAM role ({iam_role.DEFAULT_ROLE_NAME}) with this trust "
          "policy:\n"
          f"    {json.dumps(iam_role.trust_policy(account))}\n"
          f"  and this one permission (inline policy {iam_role.policy_name(instance_id)}):\n"
          f"    {json.dumps(iam_role.stop_policy(arn))}\n"
          f"  then add its ARN to [profiles.{profile}.bastion]: backstop_role = "
          f'"arn:{iam_role.partition(region)}:iam::{account}:role/'
          f'{iam_role.DEFAULT_ROLE_NAME}"\n'
          "  until then the backstop is off: if every laptop vanishes, nothing stops the "
          "bastion; the profile is written without it", file=sys.stderr)
