"""The sandbox's AWS: moto's server on 127.0.0.1, and the environment that points boto3 at it."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import boto3

from bastion_tray.core.netguard import ENV as LOOPBACK_ENV
from bastion_tray.sandbox.errors import SandboxError
from bastion_tray.sandbox.net import free_port, require_loopback
from bastion_tray.sandbox.procs import ProcessSet, wait_for

REGION = "ap-northeast-1"
DUMMY_CREDENTIAL = "testing"


def start_moto(procs: ProcessSet, state_dir: Path, timeout: float = 20.0) -> str:
    """Start moto's server on a free 127.0.0.1 port; returns its endpoint URL once it answers."""
    port = free_port("127.0.0.1")
    endpoint = f"http://127.0.0.1:{port}"
    env = child_env(sandbox_aws_env(endpoint, state_dir))
    # moto's server, but GetConsoleOutput answers from <state_dir>/console (sandbox/console.py)
    proc = procs.spawn("moto", [sys.executable, "-m", "bastion_tray.sandbox.motoserver",
                                "--console-dir", str(state_dir / "console"),
                                "-H", "127.0.0.1", "-p", str(port)],
                       log_file=state_dir / "moto.log", env=env)

    def answers() -> bool:
        if proc.poll() is not None:
            raise SandboxError(f"moto server exited with {proc.returncode}; see "
                               f"{state_dir / 'moto.log'}")
        try:
            # moto's own dashboard route: answers without credentials
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return True
        except (urllib.error.URLError, OSError):
            return False

    if not wait_for(answers, timeout=timeout):
        raise SandboxError(f"moto server on {endpoint} did not answer in {timeout:.0f}s")
    return endpoint


def sandbox_aws_env(endpoint: str, state_dir: Path) -> dict[str, str]:
    """Env vars that send boto3 to the sandbox and nowhere else.

    The config/credential files point at files that do not exist, so a developer's ~/.aws never
    leaks in. AWS_PROFILE cannot be blanked here (botocore reads "" as a profile named "" and
    fails): merge with `child_env()`, which drops every inherited AWS_* variable first.
    """
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIAL,
        "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIAL,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": str(state_dir / "no-such-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(state_dir / "no-such-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        LOOPBACK_ENV: "1",
    }


def child_env(sandbox_env: dict[str, str], base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) without its AWS_* variables (a profile, an
    AWS_ENDPOINT_URL_EC2 that would win over ours, a session token), plus the sandbox's."""
    base = dict(os.environ) if base is None else base
    kept = {k: v for k, v in base.items() if not k.startswith("AWS_")}
    return {**kept, **sandbox_env}


def ec2_client(endpoint: str) -> Any:
    """A boto3 EC2 client bound to the sandbox explicitly, whatever the process env says."""
    return _client("ec2", endpoint)


def scheduler_client(endpoint: str) -> Any:
    """A boto3 EventBridge Scheduler client bound to the sandbox explicitly."""
    return _client("scheduler", endpoint)


def iam_client(endpoint: str) -> Any:
    """A boto3 IAM client bound to the sandbox explicitly."""
    return _client("iam", endpoint)


def _client(service: str, endpoint: str) -> Any:
    # a session of its own: boto3's default one is shared, and not safe across threads
    require_loopback(urllib.parse.urlsplit(endpoint).hostname or endpoint, f"{service} endpoint")
    session = boto3.session.Session(aws_access_key_id=DUMMY_CREDENTIAL,
                                    aws_secret_access_key=DUMMY_CREDENTIAL, region_name=REGION)
    return session.client(service, endpoint_url=endpoint)


def instance_state(ec2: Any, instance_id: str) -> str:
    reply = ec2.describe_instances(InstanceIds=[instance_id])
    return str(reply["Reservations"][0]["Instances"][0]["State"]["Name"])
