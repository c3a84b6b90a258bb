"""Bringing a stopped bastion to `running`, as a pure loop over the Cloud port.

From `stopped`: start. From `stopping`: wait for `stopped`, then start (EC2 refuses a start
while stopping). From `pending`: wait. Polls every ≤ 2 s instead of boto3's 15-second waiter.
"""

from __future__ import annotations

from collections.abc import Callable

from bastion_tray.core.durations import format_duration
from bastion_tray.core.errors import CloudError, WaitTimeout
from bastion_tray.core.ports import Cloud, InstanceInfo, Progress

GONE = {"shutting-down", "terminated"}


def ensure_running(cloud: Cloud, *, timeout: float, clock: Callable[[], float],
                   sleep: Callable[[float], None], progress: Progress | None = None,
                   poll: float = 1.0) -> tuple[InstanceInfo, bool]:
    """Return the running instance and whether this call started it."""
    report = progress or (lambda phase, detail: None)
    begin = clock()
    started = False
    while True:
        info = cloud.describe()
        waited = format_duration(clock() - begin)
        if info.state == "running":
            if not info.address:
                raise CloudError(f"instance {info.instance_id} is running but has no public or "
                                 "Elastic IP address",
                                 hint="associate an Elastic IP, or set host = \"…\" in the "
                                      "profile's [bastion] table")
            return info, started
        if info.state in GONE:
            raise CloudError(f"instance {info.instance_id} is {info.state}: it cannot be started",
                             hint="point instance_id/name at the current bastion")
        if info.state == "stopped" and not started:
            report("starting instance", f"{info.instance_id} was stopped")
            cloud.start()
            started = True
        elif info.state == "stopping":
            report("starting instance", f"waiting for {info.instance_id} to finish stopping, "
                   f"{waited}")
        else:
            report("starting instance", f"{info.instance_id} {info.state}, {waited}")
        if clock() - begin > timeout:
            raise WaitTimeout(f"instance {info.instance_id} did not reach 'running' within "
                              f"{format_duration(timeout)} (last state: {info.state})",
                              hint="check the instance in the EC2 console")
        sleep(min(poll, 2.0))
