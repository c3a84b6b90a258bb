"""`bastion-tray cost`: the daemon records what it sees of the bastion (service/usage.py) and
reports running hours and USD from it — end to end against the sandbox (a real daemon, moto's
EC2), the record file on its own (a real file, the clock passed in), the tray's line."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion_tray.core import cost, prices
from bastion_tray.core.cost import HEARTBEAT, Observation
from bastion_tray.core.status import Status
from bastion_tray.sandbox import Sandbox
from bastion_tray.service.usage import RecordingCloud, UsageRecord, record_path
from bastion_tray.ui.model import build_menu, find
from tests.fixtures.statuses import reply
from tests.support.app import App, alive, wait_until
from tests.test_cli_startup import CONFIG, probe

T3_MICRO_TOKYO = prices.PRICES["ap-northeast-1"]["t3.micro"]
#: the figures are rounded: seconds to 0.1, the record's times to 1 ms
ROUNDING = 0.2


def costs(app: App, *args: str) -> dict[str, Any]:
    proc = app.cli("cost", *args, "--json", check=True)
    data: dict[str, Any] = json.loads(proc.stdout)["profiles"]
    return data


def shutdown(app: App) -> None:
    pid = app.daemon_pid()
    app.cli("shutdown", check=True)
    if pid is not None:
        wait_until(lambda: not alive(pid), 30, "the daemon to exit")


@pytest.fixture
def quiet_instance(fresh_sandbox: Sandbox) -> Iterator[str]:
    """A second instance in the sandbox VPC that stays stopped: profile `bar`'s bastion,
    which never runs (an app server's subnet and groups, so it looks like one; no address)."""
    ec2 = fresh_sandbox.ec2()
    vpc = fresh_sandbox.vpc
    iid = str(ec2.run_instances(
        ImageId="ami-12c6146b", InstanceType="t3.nano", MinCount=1, MaxCount=1,
        SubnetId=vpc.private_subnet_id,
        SecurityGroupIds=[vpc.security_groups["default"], vpc.security_groups["web"]],
        TagSpecifications=[{"ResourceType": "instance",
                            "Tags": [{"Key": "Name", "Value": "bar-bastion"}]}],
    )["Instances"][0]["InstanceId"])
    ec2.stop_instances(InstanceIds=[iid])
    yield iid
    ec2.terminate_instances(InstanceIds=[iid])


@pytest.fixture
def app(make_app: type[App], quiet_instance: str, fresh_sandbox: Sandbox) -> App:
    """The sandbox's profile `foo`, and `bar` whose bastion never runs."""
    installed = make_app()
    with installed.config.open("a") as f:
        f.write(f'\n[profiles.bar]\nregion = "{fresh_sandbox.region}"\n\n'
                f'[profiles.bar.bastion]\ninstance_id = "{quiet_instance}"\n'
                f'user = "{fresh_sandbox.user}"\nidentity_file = "{fresh_sandbox.client_key}"\n')
    return installed


# ---- end to end ------------------------------------------------------------------------------

def test_cost_reports_the_hours_the_bastion_just_ran(app: App) -> None:
    """up, a second of running, stop: `cost` says it ran as long as it did, give or take only
    what the commands took — the start call returns inside `up`, the stop call inside `stop`,
    so the true figure lies between (stop began − up ended) and (stop ended − up began)."""
    began = time.time()
    app.cli("up", "foo", check=True, timeout=90)
    up_done = time.time()
    time.sleep(1.0)  # the run being measured, not a wait for anything
    stop_began = time.time()
    app.cli("stop", "foo", check=True)
    ended = time.time()
    assert app.instance_state() in ("stopping", "stopped")

    figures = costs(app)
    foo, bar = figures["foo"], figures["bar"]
    seconds = foo["month"]["running_seconds"]
    assert stop_began - up_done - ROUNDING <= seconds <= ended - began + ROUNDING, \
        (seconds, stop_began - up_done, ended - began)
    assert foo["running_hours"] > 0
    assert foo["running_hours"] == pytest.approx(seconds / 3600, abs=1e-4)
    assert foo["today"]["running_seconds"] == seconds or _crossed_midnight(began)
    assert (foo["instance_type"], foo["region"]) == ("t3.micro", "ap-northeast-1")
    assert foo["instance_id"] == app.sandbox.bastion_instance_id
    assert foo["price"] == {"instance_per_hour": T3_MICRO_TOKYO, "ipv4_per_hour": 0.005,
                            "table_date": prices.TABLE_DATE}
    # the Elastic IP is charged from the first sighting on: longer than the run
    assert foo["ipv4_hours"] >= foo["running_hours"]
    assert foo["usd"] == pytest.approx(foo["running_hours"] * T3_MICRO_TOKYO
                                       + foo["ipv4_hours"] * 0.005, abs=1e-4)
    assert foo["since"] is not None and foo["usd_unknown"] is None
    # bar was seen, stopped, and never ran; it has no address, so nothing is charged
    assert bar["running_hours"] == 0 and bar["usd"] == 0 and bar["ipv4_hours"] == 0
    assert bar["instance_type"] == "t3.nano" and bar["since"] is not None

    # one profile; the human form; the same figures ride along in `status --json` for the tray
    assert set(costs(app, "foo")) == {"foo"}
    human = app.cli("cost", "foo", check=True).stdout.splitlines()
    assert human[0].startswith(f"foo  {app.sandbox.bastion_instance_id}  t3.micro "
                               "ap-northeast-1  today "), human
    assert " · this month " in human[0] and "$" in human[0]
    assert "from what this daemon saw" in human[-1]
    assert app.status()["cost"]["running_hours"] == foo["running_hours"]
    assert app.cli("cost", "nope").returncode == 2


def _crossed_midnight(began: float) -> bool:
    return cost.day_start(time.time()) > began


def test_the_record_survives_a_daemon_restart_and_a_corrupt_line(app: App) -> None:
    app.cli("up", "foo", check=True, timeout=90)
    app.cli("stop", "foo", check=True)
    before = costs(app, "foo")["foo"]["month"]["running_seconds"]
    assert before > 0
    shutdown(app)

    record = record_path(app.home / "state", "foo")
    lines = record.read_text().splitlines()
    assert [json.loads(line)["src"] for line in lines].count("start") == 1
    # a torn line (as a crash mid-write leaves it) and an edited one, then a fresh daemon
    record.write_text("\n".join([lines[0], "{not json", *lines[1:], '{"t": "x"'])
                      + "\n")
    after = costs(app, "foo")["foo"]
    assert after["month"]["running_seconds"] == pytest.approx(before, abs=0.1)
    assert "skipped 2 line(s) that are not observations" in app.log()
    # the new daemon appended its own first sighting, the bastion still stopped
    last = json.loads(record.read_text().splitlines()[-1])
    assert last["state"] == "stopped" and last["src"] == "describe"


# ---- the record on its own -------------------------------------------------------------------

class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def running(t: float) -> Observation:
    return Observation(t, "running", "t3.micro", True, True, "i-0abc")


def test_unchanged_sightings_are_written_as_a_heartbeat_only(tmp_path: Path) -> None:
    clock = Clock(1_800_000_000.0)
    path = tmp_path / "usage" / "foo.jsonl"
    record = UsageRecord(path, "foo", "ap-northeast-1", clock=clock)
    for i in range(41):  # 20 minutes of describes every 30 s
        clock.t = 1_800_000_000.0 + 30 * i
        record.observe(running(clock.t))
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + int(1200 // HEARTBEAT)  # the first, then one every 5 minutes
    record.observe(Observation(clock.t + 1, "stopping", "t3.micro", True, True, "i-0abc"))
    assert len(path.read_text().splitlines()) == len(lines) + 1  # a change: at once
    # the live figures count every sighting, written or not
    assert record.usage(clock.t + 1).month.running_seconds == pytest.approx(1201)
    # the next daemon writes its first sighting even when nothing changed
    again = UsageRecord(path, "foo", "ap-northeast-1", clock=clock)
    again.observe(Observation(clock.t + 5, "stopping", "t3.micro", True, True, "i-0abc"))
    assert len(path.read_text().splitlines()) == len(lines) + 2


def test_a_record_that_cannot_be_written_fails_nothing_and_says_so_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "usage"
    blocker.write_text("a file where the directory should be")
    record = UsageRecord(record_path(tmp_path, "foo"), "foo", "ap-northeast-1",
                         clock=Clock(1_800_000_000.0))
    with caplog.at_level(logging.WARNING, logger="bastion_tray.daemon"):
        for i in range(3):
            record.observe(running(1_800_000_000.0 + HEARTBEAT * i))
    warnings = [r for r in caplog.records if "could not" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    # what it saw still counts while the daemon lives
    assert record.usage(1_800_000_000.0 + 2 * HEARTBEAT).month.running_seconds > 0


def test_lines_older_than_the_retention_are_dropped_at_load(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    path = tmp_path / "foo.jsonl"
    old = [running(now - cost.RETENTION - 86400 * d) for d in (3, 2, 1)]
    recent = [running(now - 86400), Observation(now - 86000, "stopped")]
    path.write_text("".join(o.to_line() + "\n" for o in [*old, *recent]))
    record = UsageRecord(path, "foo", "ap-northeast-1", clock=Clock(now))
    assert [cost.parse_line(line) for line in path.read_text().splitlines()] == recent
    # in memory: the last 40 days, and the one line before them (what held when they began)
    assert record.observations() == [old[-1], *recent]


def test_the_recorder_passes_the_clouds_answers_and_errors_through(
        fresh_sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against moto's EC2 through the real adapter: a describe comes back as it came and is
    recorded with the instance type; a failing call raises the adapter's own error and records
    nothing; what the wrapper does not define reaches the adapter."""
    import os

    from bastion_tray.adapters.cloud import Ec2Cloud
    from bastion_tray.core.config import load_config
    from bastion_tray.core.errors import CloudError

    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in fresh_sandbox.child_env({}).items():
        monkeypatch.setenv(key, value)
    config_file = fresh_sandbox.write_config(tmp_path / "config.toml")
    profile = load_config(config_file, "test").profiles["foo"]
    record = UsageRecord(tmp_path / "foo.jsonl", "foo", profile.region)
    with Ec2Cloud(profile) as inner:
        cloud = RecordingCloud(inner, record)
        info = cloud.describe()
        assert info == inner.describe() and info.instance_type == "t3.micro"
        assert cloud.instance_id == inner.instance_id == fresh_sandbox.bastion_instance_id
        assert cloud.endpoint == inner.endpoint
    [seen] = record.observations()
    assert (seen.state, seen.instance_type, seen.elastic_ip, seen.instance_id) == (
        "stopped", "t3.micro", True, fresh_sandbox.bastion_instance_id)

    missing = load_config(fresh_sandbox.write_config(
        tmp_path / "missing.toml", extra_bastion={"name": None,
                                                  "instance_id": "i-0123456789abcdef0"}),
        "test").profiles["foo"]
    empty = UsageRecord(tmp_path / "missing.jsonl", "foo", missing.region)
    with Ec2Cloud(missing) as inner:
        with pytest.raises(CloudError):
            RecordingCloud(inner, empty).describe()
        with pytest.raises(CloudError):
            RecordingCloud(inner, empty).start()
    assert empty.observations() == [] and not (tmp_path / "missing.jsonl").exists()


# ---- the tray and the client -------------------------------------------------------------------

def test_the_tray_shows_this_months_figures_in_a_disabled_line() -> None:
    data = reply("stopped")
    data["profiles"]["foo"]["cost"] = {"running_hours": 3.2, "usd": 0.0652}
    menu = build_menu(Status.from_json(data))
    line = find(menu, "this month:")
    assert line.label == "this month: 3.2 h · $0.07" and not line.enabled
    # with several profiles it sits in the profile's submenu
    data["profiles"]["bar"] = {**data["profiles"]["foo"],
                               "cost": {"running_hours": 0.0, "usd": None}}
    menu = build_menu(Status.from_json(data))
    bar = find(menu, "bar:")
    assert find(bar.submenu or (), "this month:").label == "this month: 0.0 h · $?"
    # a daemon that sends no figures: no line
    assert not any(getattr(e, "label", "").startswith("this month")
                   for e in build_menu(Status.from_json(reply("stopped"))))


def test_cost_imports_no_heavy_library() -> None:
    """tests/test_cli_startup.py's probe: the fake daemon there answers no `cost` (exit 1);
    what the command imported on its way to the socket still counts."""
    home = Path(tempfile.mkdtemp(prefix="bt-", dir="/tmp"))
    try:
        (home / "config.toml").write_text(CONFIG)
        assert probe(home, ["cost"]) == {"code": 1, "heavy": []}
        assert probe(home, ["cost", "foo", "--json"]) == {"code": 1, "heavy": []}
    finally:
        shutil.rmtree(home, ignore_errors=True)
