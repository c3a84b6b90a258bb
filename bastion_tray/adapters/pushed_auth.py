"""Authenticating with a key just pushed by EC2 Instance Connect (identity =
"ec2-instance-connect"): that key alone, so a refusal says what is wrong with the push."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import paramiko

from bastion_tray.core.errors import SSHError

#: a key the instance accepts now (ec2-instance-connect: generated and pushed by the call)
InstanceKey = Callable[[], paramiko.PKey]


def authenticate_pushed(transport: paramiko.Transport, user: str, where: str,
                        instance_key: InstanceKey, logger: logging.LoggerAdapter[Any]
                        ) -> tuple[str, paramiko.PKey]:
    """identity = "ec2-instance-connect": only the key `instance_key()` just pushed (no file,
    no agent keys: a refusal then says what is wrong with the push, not with a key list)."""
    key = instance_key()  # a CloudError when the push fails: it says what to fix
    label = "an ec2-instance-connect key"
    try:
        remaining = transport.auth_publickey(user, key)
    except paramiko.BadAuthenticationType as exc:
        allowed = ", ".join(exc.allowed_types) or "nothing"
        raise SSHError(f"{where} does not accept public-key authentication (it allows: "
                       f"{allowed})") from None
    except paramiko.AuthenticationException:
        logger.debug("%s refused", label)
        raise SSHError(f"{where} refused the key just pushed with ec2-instance-connect for "
                       f"{user}",
                       hint="the instance needs EC2 Instance Connect set up (the "
                            "ec2-instance-connect package's AuthorizedKeysCommand: Amazon "
                            "Linux and Ubuntu AMIs have it) and user must be its OS user "
                            "(ec2-user, ubuntu, ...)") from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise SSHError(f"{where} dropped the connection during authentication: "
                       f"{str(exc) or type(exc).__name__}") from None
    if remaining:
        raise SSHError(f"{where} wants more than a key for {user} ({', '.join(remaining)}); "
                       "bastion-tray supports keys only")
    return label, key
