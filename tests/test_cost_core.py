"""core/cost.py and core/prices.py: running hours and USD from a record of observations, with
the clock and the time zone passed in (a fake clock: nothing here waits or reads the time)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from bastion_tray.core import cost, prices
from bastion_tray.core.cost import HEARTBEAT, MAX_GAP, Observation, parse_line

TOKYO = ZoneInfo("Asia/Tokyo")
REGION = "ap-northeast-1"
T3_MICRO = prices.PRICES[REGION]["t3.micro"]


def at(text: str, tz: ZoneInfo = TOKYO) -> float:
    """Epoch seconds of a local wall-clock time, "2026-12-03 10:00"."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=tz).timestamp()


def seen(t: float, state: str, *, kind: str = "t3.micro", ip: bool = False, eip: bool = True,
         iid: str = "i-0abc", source: str = "describe") -> Observation:
    return Observation(t, state, kind, ip, eip, iid, source)


def run(start: float, end: float, *, kind: str = "t3.micro", eip: bool = True,
        beat: float = HEARTBEAT) -> list[Observation]:
    """What the recorder writes for one run watched throughout: the start call, a heartbeat
    every `beat` seconds while it runs, the stop call, the describe that saw it stopped."""
    out = [seen(start, "pending", kind=kind, eip=eip, source="start")]
    t = start + 1
    while t < end:
        out.append(seen(t, "running", kind=kind, ip=True, eip=eip))
        t += beat
    out += [seen(end, "stopping", kind=kind, ip=True, eip=eip, source="stop"),
            seen(end + 10, "stopped", kind=kind, eip=eip)]
    return out


def test_a_watched_run_counts_from_the_start_call_to_the_stop_call() -> None:
    start, now = at("2026-12-03 10:00"), at("2026-12-03 12:00")
    record = run(start, start + 1800)
    u = cost.usage(record, REGION, now=now, tz=TOKYO)
    assert u.month.running_seconds == pytest.approx(1800)
    assert u.today.running_seconds == pytest.approx(1800)
    # the EIP is charged from the start call to the last line (the record alone: no daemon)
    assert u.month.ipv4_seconds == pytest.approx(1810)
    assert u.month.usd == pytest.approx(0.5 * T3_MICRO + 1810 / 3600 * prices.IPV4_PER_HOUR)
    assert u.instance_type == "t3.micro" and u.instance_id == "i-0abc"
    assert u.since == start and u.price.per_hour == T3_MICRO


def test_a_daemon_that_died_mid_run_counts_only_until_its_last_sighting() -> None:
    start = at("2026-12-03 10:00")
    died = [o for o in run(start, start + 7200) if o.at <= start + 1201]  # beats until +1201
    later = seen(start + 3 * 3600, "stopped")  # the next daemon, hours later, sees it stopped
    u = cost.usage([*died, later], REGION, now=start + 4 * 3600, tz=TOKYO)
    assert u.month.running_seconds == pytest.approx(1201)
    assert died[-1].at - died[-2].at <= MAX_GAP < later.at - died[-1].at


def test_the_live_daemon_counts_up_to_now_while_its_sighting_is_fresh() -> None:
    start = at("2026-12-03 10:00")
    record = [seen(start, "stopped"), seen(start + 60, "pending", source="start"),
              seen(start + 62, "running", ip=True)]
    now = start + 62 + HEARTBEAT - 1  # no heartbeat written yet; the describes go on
    fresh = cost.usage(record, REGION, now=now, tz=TOKYO, last_seen=now - 20)
    assert fresh.month.running_seconds == pytest.approx(now - (start + 60))
    # describes failing for longer than MAX_GAP: counted until the last one that answered
    stale_seen = start + 100
    stale = cost.usage(record, REGION, now=stale_seen + MAX_GAP + 1, tz=TOKYO,
                       last_seen=stale_seen)
    assert stale.month.running_seconds == pytest.approx(40)
    # the record alone (no live daemon): until the last line
    assert cost.usage(record, REGION, now=now, tz=TOKYO).month.running_seconds == \
        pytest.approx(2)


def test_an_elastic_ip_on_a_stopped_bastion_is_charged_but_not_as_running() -> None:
    start = at("2026-12-03 08:00")
    now = start + 5 * 3600
    u = cost.usage([seen(start, "stopped")], REGION, now=now, tz=TOKYO, last_seen=start)
    assert u.month.running_seconds == 0
    assert u.month.ipv4_seconds == pytest.approx(5 * 3600)  # the live daemon: until now
    assert u.month.usd == pytest.approx(5 * prices.IPV4_PER_HOUR)
    # across a gap (no daemon) only when both sides still show the EIP on that instance
    kept = cost.usage([seen(start, "stopped"), seen(start + 3 * 3600, "stopped")], REGION,
                      now=now, tz=TOKYO)
    assert kept.month.ipv4_seconds == pytest.approx(3 * 3600)
    released = cost.usage([seen(start, "stopped"), seen(start + 3 * 3600, "stopped", eip=False)],
                          REGION, now=now, tz=TOKYO)
    assert released.month.ipv4_seconds == 0
    no_eip = cost.usage([seen(start, "stopped", eip=False)], REGION, now=now, tz=TOKYO,
                        last_seen=start)
    assert no_eip.month.ipv4_seconds == 0 and no_eip.month.usd == 0


def test_today_and_this_month_begin_at_local_midnight() -> None:
    # 23:30 on the last day of November to 00:30 on December 1st, Tokyo time
    record = run(at("2026-11-30 23:30"), at("2026-12-01 00:30"))
    now = at("2026-12-01 08:00")  # 23:00 UTC on November 30th
    u = cost.usage(record, REGION, now=now, tz=TOKYO)
    assert u.today.running_seconds == pytest.approx(1800)
    assert u.month.running_seconds == pytest.approx(1800)
    assert u.today.start == u.month.start == at("2026-12-01 00:00")
    # the same instants seen from UTC, where the whole run fell on November 30th
    utc = ZoneInfo("UTC")
    u_utc = cost.usage(record, REGION, now=now, tz=utc)
    assert u_utc.today.running_seconds == pytest.approx(3600)
    assert u_utc.month.running_seconds == pytest.approx(3600)
    assert u_utc.month.start == at("2026-11-01 00:00", utc)


def test_month_start_across_a_daylight_saving_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    now = at("2026-04-15 12:00", berlin)  # CEST (+2); April 1st is CEST too
    assert cost.month_start(now, berlin) == at("2026-04-01 00:00", berlin)
    late_march = at("2026-03-30 12:00", berlin)  # CEST; March 1st was CET (+1)
    assert cost.month_start(late_march, berlin) == at("2026-03-01 00:00", berlin)
    assert datetime.fromtimestamp(cost.month_start(late_march, berlin), berlin).hour == 0


def test_each_run_is_priced_by_the_type_it_ran_as() -> None:
    first = run(at("2026-12-02 10:00"), at("2026-12-02 11:00"), kind="t3.micro", eip=False)
    second = run(at("2026-12-03 10:00"), at("2026-12-03 12:00"), kind="t3.small", eip=False)
    u = cost.usage([*first, *second], REGION, now=at("2026-12-03 13:00"), tz=TOKYO)
    assert u.month.running_hours == pytest.approx(3)
    assert u.today.running_hours == pytest.approx(2)
    small = prices.PRICES[REGION]["t3.small"]
    ipv4 = u.month.ipv4_hours * prices.IPV4_PER_HOUR  # the public IPs while running
    assert u.month.usd == pytest.approx(T3_MICRO + 2 * small + ipv4)
    assert u.instance_type == "t3.small"


def test_an_unknown_type_or_region_gives_hours_and_no_usd_with_the_reason() -> None:
    record = run(at("2026-12-03 10:00"), at("2026-12-03 11:00"))
    u = cost.usage(record, "xx-1", now=at("2026-12-03 12:00"), tz=TOKYO)
    assert u.month.running_hours == pytest.approx(1)
    assert u.month.usd is None and u.today.usd is None
    assert u.reason is not None and "no price for t3.micro in xx-1 in the shipped table" in \
        u.reason
    data = cost.usage_json(u)
    assert data["usd"] is None and data["running_hours"] == pytest.approx(1)
    assert data["usd_unknown"] == u.reason and data["price"]["instance_per_hour"] is None
    # a profile that never ran costs nothing, priced or not
    assert cost.usage([], "xx-1", now=0.0).month.usd == 0


def test_the_json_carries_running_hours_per_profile_as_a_plain_number() -> None:
    u = cost.usage(run(at("2026-12-03 10:00"), at("2026-12-03 10:36")), REGION,
                   now=at("2026-12-03 11:00"), tz=TOKYO)
    data = cost.usage_json(u)
    assert type(data["running_hours"]) is float and data["running_hours"] == pytest.approx(0.6)
    assert data["month"]["running_seconds"] == pytest.approx(2160)
    assert data["price"] == {"instance_per_hour": T3_MICRO, "ipv4_per_hour": 0.005,
                             "table_date": prices.TABLE_DATE}
    assert data["since"] == "2026-12-03T01:00:00Z"
    assert cost.usage_json(cost.usage([], REGION, now=1.0))["since"] is None


def test_observations_out_of_order_and_in_the_future_are_tolerated() -> None:
    start = at("2026-12-03 10:00")
    record = run(start, start + 1200)
    u = cost.usage(list(reversed(record)), REGION, now=start + 600, tz=TOKYO)
    assert u.month.running_seconds == pytest.approx(600)  # up to now, never past it


@pytest.mark.parametrize("line", [
    "", "{", "not json", "[]", "null", '{"t": "x", "state": "running"}',
    '{"t": 1.0}', '{"t": 1.0, "state": ""}', '{"t": true, "state": "running"}',
    '{"t": 1e999, "state": "running"}', '{"t": 1.0, "state": 3}'])
def test_a_line_that_is_not_an_observation_is_skipped(line: str) -> None:
    assert parse_line(line) is None


def test_lines_round_trip() -> None:
    o = seen(1764720000.25, "running", ip=True, source="start")
    assert parse_line(o.to_line()) == o
    assert parse_line('{"t": 5, "state": "stopped"}') == Observation(5.0, "stopped")


def test_the_shipped_table_covers_the_small_types_in_its_regions() -> None:
    for region in ("ap-northeast-1", "us-east-1", "eu-west-1"):
        for family in ("t2", "t3", "t3a", "t4g"):
            for size in ("nano", "micro", "small", "medium"):
                price = prices.instance_price(f"{family}.{size}", region).per_hour
                assert price is not None and 0.001 < price < 0.1, (region, family, size)
    assert prices.instance_price(None, REGION).reason is not None
    assert datetime.strptime(prices.TABLE_DATE, "%Y-%m-%d")


@pytest.mark.parametrize(("hours", "usd", "line"), [
    (3.2, 0.0652, "this month: 3.2 h · $0.07"),
    (0.0, 0.0, "this month: 0.0 h · $0.00"),
    (0.02, 0.0004, "this month: 1 min · <$0.01"),
    (6.1 / 3600, 0.00003, "this month: 6 s · <$0.01"),
    (12.25, None, "this month: 12.2 h · $?"),
])
def test_the_tray_line(hours: float, usd: float | None, line: str) -> None:
    assert cost.tray_line(hours, usd) == line


def test_the_update_script_rewrites_the_table_it_reads_unchanged() -> None:
    """scripts/update_prices.py renders the block it replaces: the shipped table, rendered
    again with its own date, is the file as it is — so a refresh diff shows only prices."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "update_prices.py"
    spec = importlib.util.spec_from_file_location("update_prices", script)
    assert spec is not None and spec.loader is not None
    update = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(update)
    text = update.TABLE.read_text()
    block = update.render(prices.PRICES, prices.TABLE_DATE, prices.TABLE_SOURCE)
    assert update.rewrite(text, block) == text
    cheaper = {r: {**kinds, "t3.micro": 0.001} for r, kinds in prices.PRICES.items()}
    changed = update.rewrite(text, update.render(cheaper, "2027-01-01", prices.TABLE_SOURCE))
    assert '"t3.micro": 0.001,' in changed and 'TABLE_DATE = "2027-01-01"' in changed
    assert changed.endswith(text[text.index(update.END):])
