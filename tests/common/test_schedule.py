"""The one schedule grammar: parsing, next fires, and server/agent/updater agreeing on it."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import schedule as agent_schedule
from common.errors import ConfigError
from common.schedule import (
    At,
    Cron,
    InvalidFrequencyError,
    Rate,
    next_fire,
    next_update_time,
    parse_frequency,
    system_zone,
)
from server import model
from server.rpc import ApiError
from updater.schedule import next_update_time as updater_next_update_time


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def server_accepts(text: str) -> bool:
    """The server's entry point: InvokeCommand's Frequency validation."""
    try:
        model.validate_frequency(text)
    except ApiError as exc:
        assert exc.code == "InvalidParam.Frequency"
        return False
    return True


def agent_can_schedule(text: str) -> bool:
    """The agent's entry point: parse the task's frequency and arm its first timer."""
    try:
        sched = agent_schedule.parse_frequency(text)
    except agent_schedule.InvalidFrequencyError:
        return False
    agent_schedule.next_fire(sched, ts("2026-06-01T00:00:00"), ts("2026-05-01T00:00:00"))
    return True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rate(5m)", Rate(300)),
        ("rate( 5m )", Rate(300)),
        ("  rate(60s) ", Rate(60)),
        ("rate(7d)", Rate(7 * 86400)),
        ("at(2026-12-01T03:00:00Z)", At(ts("2026-12-01T03:00:00"))),
        ("at(2026-12-01 11:00:00 Asia/Shanghai)", At(ts("2026-12-01T03:00:00"))),
        ("at(2026-12-01 11:00:00 GMT+8:00)", At(ts("2026-12-01T03:00:00"))),
        ("at(2026-12-01 03:00:00)", At(ts("2026-12-01T03:00:00"))),
        ("0 */10 * * * *", Cron("0 */10 * * * *")),
        ("0 0 12 ? * WED", Cron("0 0 12 ? * WED")),
        ("0 15 10 ? * 6#3 2099", Cron("0 15 10 ? * 6#3 2099")),
        ("0 0 3 * * * Asia/Shanghai", Cron("0 0 3 * * *", "Asia/Shanghai")),
        ("0 0 3 * * * 2030 UTC+05:30", Cron("0 0 3 * * * 2030", "UTC+05:30")),
    ],
)
def test_api_forms_parse(text: str, expected: object) -> None:
    assert parse_frequency(text) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "rate(59s)",  # below the API's 60 s floor
        "rate(8d)",  # above its 7 day ceiling
        "rate(5 m)",
        "rate(5y)",
        "at(tomorrow)",
        "at(2026-12-01T03:00:00Z Asia/Shanghai)",  # two zones
        "* * * * *",  # 5 fields: minutes-first cron is not the grammar
        "61 * * * * *",
        "0 0 0 30 2 *",  # never fires
        "0 0 3 * * * Mars/Olympus",
        "0 0 3 * * * ../../etc/passwd",
        "0 0 3 * * * GMT+15",
        "0 0 3 * * * 2030 UTC x",
    ],
)
def test_malformed_frequencies_are_refused_by_all(bad: str) -> None:
    with pytest.raises(InvalidFrequencyError) as err:
        parse_frequency(bad)
    assert err.value.hint or err.value.message
    assert not server_accepts(bad)
    assert not agent_can_schedule(bad)


def test_cron_fires_in_its_zone_and_year() -> None:
    assert next_fire(parse_frequency("0 0 3 * * * Asia/Shanghai"), ts("2026-01-01T00:00:00")) == ts(
        "2026-01-01T19:00:00"
    )
    assert next_fire(parse_frequency("0 0 3 * * * GMT-2"), ts("2026-01-01T00:00:00")) == ts(
        "2026-01-01T05:00:00"
    )
    assert next_fire(parse_frequency("0 0 0 1 1 * 2030"), ts("2026-01-01T00:00:00")) == ts(
        "2030-01-01T00:00:00"
    )
    # a year that has passed: parses, but never fires again
    assert next_fire(parse_frequency("0 0 0 1 1 * 2020"), ts("2026-01-01T00:00:00")) is None


def test_a_cron_without_a_zone_fires_in_the_system_zone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As the real API: a zone-less cron runs in the instance's system time zone."""
    nightly = parse_frequency("0 0 3 * * *")
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    assert next_fire(nightly, ts("2026-01-01T00:00:00")) == ts("2026-01-01T19:00:00")
    monkeypatch.setenv("TZ", "America/New_York")  # read on each call; DST moves the fire
    assert next_fire(nightly, ts("2026-01-01T00:00:00")) == ts("2026-01-01T08:00:00")
    assert next_fire(nightly, ts("2026-07-01T00:00:00")) == ts("2026-07-01T07:00:00")
    monkeypatch.setenv("TZ", "UTC")
    assert next_fire(nightly, ts("2026-01-01T00:00:00")) == ts("2026-01-01T03:00:00")
    # no TZ: /etc/localtime (a copy of a real zone file here); an unreadable one: the offset
    monkeypatch.delenv("TZ")
    localtime = tmp_path / "localtime"
    localtime.write_bytes(Path("/usr/share/zoneinfo/Asia/Tokyo").read_bytes())
    monkeypatch.setattr("common.schedule.LOCALTIME", str(localtime))
    assert next_fire(nightly, ts("2026-01-01T00:00:00")) == ts("2026-01-01T18:00:00")
    localtime.write_bytes(b"not a zone file")
    assert system_zone({}).utcoffset(datetime.now()) == datetime.now().astimezone().utcoffset()
    # an unknown TZ falls through to the next source rather than failing the schedule
    assert system_zone({"TZ": "Mars/Base"}) is not None


def test_update_schedule_is_the_cron_part_of_the_same_grammar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "UTC")
    now = ts("2026-11-26T02:59:30")
    assert next_update_time("0 0 3 * * * Asia/Shanghai", now, 0) == ts("2026-11-26T19:00:00")
    when = next_update_time("0 0 3 * * *", now, 3600, random.Random(7))
    assert when is not None and ts("2026-11-26T03:00:00") <= when <= ts("2026-11-26T04:00:00")
    assert next_update_time("", now, 3600) is None
    with pytest.raises(ConfigError):
        next_update_time("rate(5m)", now, 0)  # updates follow a cron, not a rate
    moment = datetime.fromtimestamp(now, tz=timezone.utc)
    assert updater_next_update_time("0 0 3 * * * Asia/Shanghai", moment, 0) == datetime(
        2026, 11, 26, 19, 0, tzinfo=timezone.utc
    )


_CRON_TOKENS = st.sampled_from(
    ["*", "?", "0", "5", "59", "60", "*/10", "1-5", "1,3", "L", "15W", "6#3", "WED", "JAN", "x", ""]
)
_ZONES = st.sampled_from(
    ["", "UTC", "Asia/Shanghai", "GMT+8", "GMT+8:00", "UTC-05:30", "GMT+15", "Mars/Base", "2030"]
)


@st.composite
def frequencies(draw: st.DrawFn) -> str:
    """Strings near the grammar: most valid, many a token away from valid."""
    kind = draw(st.sampled_from(["cron", "rate", "at", "text"]))
    if kind == "cron":
        fields = draw(st.lists(_CRON_TOKENS, min_size=5, max_size=8))
        return " ".join([*fields, draw(_ZONES)]).strip()
    if kind == "rate":
        number = draw(st.integers(min_value=0, max_value=20000))
        unit = draw(st.sampled_from(["s", "m", "h", "d", "w", ""]))
        space = draw(st.sampled_from(["", " ", "\t"]))
        return f"rate({space}{number}{unit}{space})"
    if kind == "at":
        moment = draw(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 1, 1)))
        form = draw(st.sampled_from(["iso", "iso_z", "api"]))
        text = {
            "iso": moment.isoformat(),
            "iso_z": moment.isoformat() + "Z",
            "api": moment.strftime("%Y-%m-%d %H:%M:%S"),
        }[form]
        return f"at({text} {draw(_ZONES)})".replace(" )", ")")
    return draw(st.text(max_size=30))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frequencies())
def test_server_accepts_exactly_what_the_agent_can_schedule(text: str) -> None:
    assert server_accepts(text) == agent_can_schedule(text)
