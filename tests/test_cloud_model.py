"""The daemon's trimmed botocore data: what it loads, that it still resolves real endpoints,
and that it is still a faithful cut of the installed botocore (regenerate it if not)."""

from __future__ import annotations

from typing import Any

import botocore.session
import pytest

from bastion_tray.adapters.aws_session import TRIMMED_MODELS, default_session
from bastion_tray.core.config import BastionConfig, Profile

OPS = {"DescribeInstances", "DescribeAddresses", "StartInstances", "StopInstances", "CreateTags",
       "DeleteTags",  # the lifecycle and the lease
       "DescribeSecurityGroups", "AuthorizeSecurityGroupIngress", "RevokeSecurityGroupIngress",
       "UpdateSecurityGroupRuleDescriptionsIngress",  # ingress = "my-ip"
       "GetConsoleOutput"}  # a first contact's host key


def profile(region: str = "ap-northeast-1") -> Profile:
    return Profile("foo", region, None, BastionConfig(None, "foo-bastion", "ec2-user", None))


@pytest.fixture
def no_endpoint_override(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL_STS", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def test_the_daemon_loads_only_the_operations_it_calls(no_endpoint_override: None) -> None:
    client = default_session(profile()).client("ec2")
    assert set(client.meta.service_model.operation_names) == OPS
    assert client.can_paginate("describe_instances")


@pytest.mark.parametrize(("region", "service", "url"), [
    ("ap-northeast-1", "ec2", "https://ec2.ap-northeast-1.amazonaws.com"),
    ("us-east-1", "ec2", "https://ec2.us-east-1.amazonaws.com"),
    ("cn-north-1", "ec2", "https://ec2.cn-north-1.amazonaws.com.cn"),
    ("us-gov-west-1", "ec2", "https://ec2.us-gov-west-1.amazonaws.com"),
    ("eu-west-1", "sts", "https://sts.eu-west-1.amazonaws.com"),
])
def test_real_endpoints_still_resolve(no_endpoint_override: None, region: str, service: str,
                                      url: str) -> None:
    client = default_session(profile(region)).client(service)  # no request is sent
    assert client.meta.endpoint_url == url


def _without_docs(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_docs(v) for k, v in node.items() if k != "documentation"}
    if isinstance(node, list):
        return [_without_docs(v) for v in node]
    return node


def test_the_trimmed_model_is_a_faithful_cut_of_installed_botocore() -> None:
    full_loader = botocore.session.get_session().get_component("data_loader")
    version = full_loader.determine_latest_version("ec2", "service-2")
    full = full_loader.load_service_model("ec2", "service-2", version)
    assert (TRIMMED_MODELS / "ec2" / version / "service-2.json").exists(), \
        "botocore's EC2 API version moved: run scripts/trim_ec2_model.py"
    session = botocore.session.Session()
    session.set_config_variable("data_path", str(TRIMMED_MODELS))
    trimmed = session.get_component("data_loader").load_service_model("ec2", "service-2",
                                                                      version)
    for op in OPS:
        assert trimmed["operations"][op] == _without_docs(full["operations"][op]), op
    for name, shape in trimmed["shapes"].items():
        assert shape == _without_docs(full["shapes"][name]), \
            f"{name} changed in botocore: run scripts/trim_ec2_model.py"
