"""A host key checked against the instance's console output (EC2 GetConsoleOutput).

The daemon asks this on first contact, when no store knows the bastion's key: a key listed in
the console output is recorded under the alias and used, with no prompt; a key not listed is
refused loudly; anything else (no block, no permission, an error) is a reason, added to the
usual unknown-key error, to fall back to ``bastion-tray trust``. Reading the console never
fails a connection by itself: every failure becomes an UNAVAILABLE verdict.

cloud-init prints the block once, at the instance's first boot. The live output (Latest) of a
bastion started many times since holds only its current boot, so when that has no block the
snapshot EC2 keeps from an earlier lifecycle change is read too; host keys live on the root
volume and outlast reboots, so an older boot's block still names them.
"""

from __future__ import annotations

import logging

from bastion_tray.adapters.cloud import Ec2Cloud
from bastion_tray.adapters.cloud_errors import is_denied
from bastion_tray.core.console_keys import ConsoleVerdict, console_fingerprints, judge, unavailable
from bastion_tray.core.errors import BastionTrayError, CredentialsError

log = logging.getLogger(__name__)

DENIED = ("ec2:GetConsoleOutput is not allowed: the host key can't be checked against the "
          "console output; falling back to `bastion-tray trust`")


def console_verdict(cloud: Ec2Cloud, presented: str,
                    instance_id: str | None = None) -> ConsoleVerdict:
    """What `instance_id`'s (default: the bastion's) console output says of `presented`."""
    label = instance_id or cloud.instance_id
    try:
        listed = console_fingerprints(cloud.console_output(instance_id))
        if listed is None:  # the current boot printed none: an earlier boot's snapshot may
            listed = console_fingerprints(cloud.console_output(instance_id, latest=False))
    except CredentialsError as err:
        return _unavailable(f"the console output could not be read: {err.message}", label)
    except BastionTrayError as err:
        if is_denied(err.__cause__):
            return _unavailable(DENIED, label)
        return _unavailable(f"the console output could not be read: {err.message}", label)
    except Exception as exc:  # a bug or an odd reply must not fail the connection
        log.exception("reading the console output of %s crashed", label)
        return _unavailable(f"reading the console output failed: {exc!r}", label)
    verdict = judge(presented, listed, instance_id=instance_id or cloud.instance_id)
    log.debug("[instance=%s] console output: %s", verdict.instance_id, verdict.reason)
    return verdict


def _unavailable(reason: str, instance_id: str | None) -> ConsoleVerdict:
    log.info("[instance=%s] host key not checked against the console output: %s",
             instance_id, reason)
    return unavailable(reason, instance_id)
