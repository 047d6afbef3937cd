"""Upgrade windows (common/upgradewindow.py): the grammar the server validates with and the
decision the agent takes, in the configured time zone, across midnight."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.upgradewindow import (
    InvalidWindowError,
    UpgradePolicy,
    Window,
    next_opening,
    open_at,
    parse_window,
    parse_windows,
)


def ts(text: str, zone: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def test_parse_and_print() -> None:
    assert parse_window("02:00-03:00") == Window(120, 180)
    assert parse_window(" 22:30-01:00 ") == Window(1350, 60)
    assert str(parse_window("22:30-01:00")) == "22:30-01:00"
    assert parse_window("22:30-01:00").minutes == 150


@pytest.mark.parametrize(
    "text", ["2:00-03:00", "02:00", "24:00-01:00", "02:60-04:00", "02:00-02:59", "05:00-05:00", ""]
)
def test_bad_windows_are_refused(text: str) -> None:
    with pytest.raises(InvalidWindowError):
        parse_window(text)


def test_overlapping_windows_and_too_many_are_refused() -> None:
    with pytest.raises(InvalidWindowError, match="overlap"):
        parse_windows(["02:00-04:00", "03:00-05:00"])
    with pytest.raises(InvalidWindowError, match="overlap"):
        parse_windows(["23:00-01:00", "00:30-02:00"])
    assert len(parse_windows([f"{h:02d}:00-{(h + 1) % 24:02d}:00" for h in range(24)])) == 24
    with pytest.raises(InvalidWindowError, match="at most 24"):
        parse_windows(["02:00-03:00"] * 25)


def test_window_wrapping_midnight_in_a_time_zone() -> None:
    windows = parse_windows(["22:00-02:00"])
    shanghai = ZoneInfo("Asia/Shanghai")
    assert open_at(windows, shanghai, ts("2026-03-01T23:30", "Asia/Shanghai"))
    assert open_at(windows, shanghai, ts("2026-03-02T01:59", "Asia/Shanghai"))
    assert open_at(windows, shanghai, ts("2026-03-02T02:00", "Asia/Shanghai")) is None
    # 23:30 in Shanghai is 15:30 UTC: outside the same windows read in UTC
    assert open_at(windows, timezone.utc, ts("2026-03-01T23:30", "Asia/Shanghai")) is None
    opening, window = next_opening(windows, shanghai, ts("2026-03-02T02:00", "Asia/Shanghai"))  # type: ignore[misc]
    assert opening == ts("2026-03-02T22:00", "Asia/Shanghai") and window == windows[0]


def test_policy_gate() -> None:
    policy = UpgradePolicy(True, tuple(parse_windows(["02:00-03:00"])), "GMT+8:00")
    inside = ts("2026-03-01T02:30", "Asia/Shanghai")
    assert policy.gate(inside) == inside
    assert policy.window_left(inside) == 30 * 60
    after = ts("2026-03-01T03:00", "Asia/Shanghai")
    assert policy.gate(after) == ts("2026-03-02T02:00", "Asia/Shanghai")
    assert policy.window_left(after) == 0
    assert UpgradePolicy(disabled=True).gate(inside) is None
    assert UpgradePolicy(enabled=False).gate(after) == after  # custom settings off


def test_wire_round_trip_and_malformed_answers() -> None:
    policy = UpgradePolicy(True, tuple(parse_windows(["22:00-01:00"])), "Asia/Shanghai", False)
    assert UpgradePolicy.from_wire(policy.to_wire()) == policy
    good = policy.to_wire()
    for bad in (
        [],
        {**good, "enabled": "yes"},
        {**good, "allowed_upgrade_windows": "22:00-01:00"},
        {**good, "allowed_upgrade_windows": ["25:00-01:00"]},
        {**good, "time_zone": "Mars/Olympus"},
        {**good, "allowed_upgrade_windows": []},  # enabled without a window
    ):
        with pytest.raises(ValueError):
            UpgradePolicy.from_wire(bad)


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(0, 1439),
    length=st.integers(60, 1439),
    when=st.floats(1.7e9, 1.9e9),
    zone=st.sampled_from(["UTC", "Asia/Shanghai", "America/Los_Angeles", "GMT-5:30"]),
)
def test_gate_always_lands_inside_a_window(start: int, length: int, when: float, zone: str) -> None:
    end = (start + length) % 1440
    window = Window(start, end)
    policy = UpgradePolicy(True, (window,), zone)
    gated = policy.gate(when)
    assert gated is not None and gated >= when and gated - when <= 86400 + 3600
    if gated != when:
        assert policy.window_left(gated) > 0
