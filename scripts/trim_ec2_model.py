"""Regenerate bastion_tray/adapters/botocore_data/: botocore's data cut to what we use.

botocore parses the whole EC2 model (~700 operations, ~24 MB) and every service's endpoints
(~7 MB) for one client: a third of a daemon that idles all day. We call a handful of operations,
so `aws_session.default_session` puts these trimmed copies first on botocore's data path. Run
after a botocore upgrade:
    .venv/bin/python scripts/trim_ec2_model.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import botocore.session

#: endpoints.json (6.8 MB parsed) cut to the services a daemon talks to: EC2, EventBridge
#: Scheduler (the backstop), and STS/SSO for assume-role and SSO credentials ("portal.sso" and
#: "oidc" are SSO's endpoint prefixes). Regional services resolve through their own rule sets;
#: a global one (IAM) needs its entry here, so IAM calls use botocore's full data (init does).
ENDPOINT_SERVICES = ("ec2", "scheduler", "sts", "portal.sso", "oidc")
#: the lifecycle's calls, the lease tag (CreateTags / DeleteTags), the my-ip ingress rule and
#: the console output that vouches for a host key (audit and init use botocore's full data)
OPERATIONS = ("DescribeInstances", "DescribeAddresses", "StartInstances", "StopInstances",
              "CreateTags", "DeleteTags", "DescribeSecurityGroups",
              "AuthorizeSecurityGroupIngress", "RevokeSecurityGroupIngress",
              "UpdateSecurityGroupRuleDescriptionsIngress", "GetConsoleOutput")
PAGINATED = ("DescribeInstances",)
OUT = Path(__file__).resolve().parent.parent / "bastion_tray" / "adapters" / "botocore_data"


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("shape"), str):
            found.add(node["shape"])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def _strip_docs(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_docs(v) for k, v in node.items() if k != "documentation"}
    if isinstance(node, list):
        return [_strip_docs(v) for v in node]
    return node


def main() -> None:
    loader = botocore.session.get_session().get_component("data_loader")
    version = loader.determine_latest_version("ec2", "service-2")
    model = loader.load_service_model("ec2", "service-2", version)
    ops = {name: model["operations"][name] for name in OPERATIONS}
    wanted, todo = set(), _refs(ops)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo |= _refs(model["shapes"][name]) - wanted
    trimmed = {"version": model["version"], "metadata": model["metadata"],
               "operations": ops, "shapes": {n: model["shapes"][n] for n in sorted(wanted)}}
    pages = loader.load_service_model("ec2", "paginators-1", version)
    target = OUT / "ec2" / version
    target.mkdir(parents=True, exist_ok=True)
    (target / "service-2.json").write_text(json.dumps(_strip_docs(trimmed), sort_keys=True))
    (target / "paginators-1.json").write_text(json.dumps(
        {"pagination": {op: pages["pagination"][op] for op in PAGINATED}}, sort_keys=True))
    endpoints = loader.load_data("endpoints")
    for partition in endpoints["partitions"]:
        partition["services"] = {name: partition["services"][name]
                                 for name in ENDPOINT_SERVICES if name in partition["services"]}
    (OUT / "endpoints.json").write_text(json.dumps(endpoints, sort_keys=True))
    print(f"wrote {target}: {len(ops)} operations, {len(wanted)} shapes; endpoints for "
          f"{', '.join(ENDPOINT_SERVICES)}")


if __name__ == "__main__":
    main()
