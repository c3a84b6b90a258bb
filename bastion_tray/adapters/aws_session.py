"""boto3 sessions and clients as every AWS adapter builds them: the standard chain with the
daemon's trimmed botocore data first, and the limits of one call (ApiLimits)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError

from bastion_tray.core.config import Profile

USER_AGENT_EXTRA = "bastion-tray"

#: botocore's standard retry mode (botocore.retries.standard.ExponentialBackoff): the base of
#: its backoff for an error that is not throttling, and the cap of every backoff, in seconds
NON_THROTTLING_BACKOFF = 0.05
MAX_BACKOFF = 20.0

SessionFactory = Callable[[Profile], boto3.session.Session]


@dataclass(frozen=True)
class ApiLimits:
    """How long and how often one EC2 call may try before it fails.

    The bound that matters is an endpoint that hangs: one that accepts the TCP connection and
    never answers (a proxy, a captive portal, a VPN route to nowhere) or one that never
    completes the connection. Every attempt then ends after connect_timeout + read_timeout at
    the latest, and standard mode waits at most 50 ms × 2^i before retry i of a non-throttling
    error, so one call fails within `longest_call` seconds — 27.2 s with these values, under
    the 30 s after which the daemon gives up on a call (the lifecycle's api_give_up), so
    the adapter's own error, naming the endpoint, comes first. Connect and read timeouts add up
    because both can happen in one attempt (a slow connect, then silence); the 5 s / 8 s /
    3 attempts that look natural would allow 39 s.
    """

    # per call, the first try included. Also what throttling (RequestLimitExceeded,
    # Throttling, …) gets: standard mode backs off rand × 1 s, then rand × 2 s — a throttled
    # reply is quick, so it is retries that help it, not time; more attempts would multiply
    # the timeouts below past 30 s
    total_max_attempts: int = 3
    # TCP connect and TLS handshake: 3 s allows two SYN retransmissions (at 1 s and 3 s) and
    # a TLS handshake at 600 ms round trips; an unanswered SYN is retried as a new attempt
    connect_timeout: float = 3.0
    # the wait for each read of a reply: EC2 answers DescribeInstances in well under a second
    # even in big accounts, so 6 s of silence means it will not answer; a reply that trickles
    # in a byte every few seconds is not bounded by this (no EC2 endpoint does that)
    read_timeout: float = 6.0

    @property
    def longest_call(self) -> float:
        """Seconds one call can take at most against an endpoint that never answers."""
        backoff = sum(min(NON_THROTTLING_BACKOFF * 2.0 ** i, MAX_BACKOFF)
                      for i in range(self.total_max_attempts - 1))
        return self.total_max_attempts * (self.connect_timeout + self.read_timeout) + backoff

    def client_config(self) -> Config:
        # "standard" mode retries throttling (RequestLimitExceeded, Throttling, …), 5xx and
        # connection errors and timeouts with jittered exponential backoff; set here
        # explicitly so a user's ~/.aws/config (retry_mode = legacy, max_attempts = 10)
        # cannot weaken or stretch it
        return Config(retries={"total_max_attempts": self.total_max_attempts,
                               "mode": "standard"},
                      connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
                      user_agent_extra=USER_AGENT_EXTRA)


#: botocore's EC2 model cut to the operations we call (scripts/trim_ec2_model.py): the
#: full model costs a daemon that idles all day ~24 MB of memory
TRIMMED_MODELS = Path(__file__).resolve().parent / "botocore_data"


def default_session(profile: Profile) -> boto3.session.Session:
    """boto3's standard chain: aws_profile (else AWS_PROFILE / default), the profile's region."""
    core = botocore.session.Session()
    data_path = core.get_config_variable("data_path")  # AWS_DATA_PATH of the user, if any
    core.set_config_variable("data_path", os.pathsep.join(
        p for p in (data_path, str(TRIMMED_MODELS)) if p))
    return boto3.session.Session(botocore_session=core, profile_name=profile.aws_profile,
                                 region_name=profile.region)


def uses_sso(session: boto3.session.Session) -> bool:
    """Whether the session's AWS profile logs in through IAM Identity Center (SSO)."""
    # boto3 offers no public way to its botocore session, whose scoped config this needs
    botocore_session = getattr(session, "_session", None)
    if botocore_session is None:
        return False
    try:
        scoped = botocore_session.get_scoped_config()
    except BotoCoreError:
        return False
    return "sso_start_url" in scoped or "sso_session" in scoped
