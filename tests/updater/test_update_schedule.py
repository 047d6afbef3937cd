"""Scheduled updates: seconds-first cron plus a random splay (pure, fixed clock and seed)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from common.errors import ConfigError
from updater.schedule import next_update_time

NOW = datetime(2026, 11, 26, 2, 59, 30, tzinfo=timezone.utc)


def test_seconds_first_cron_without_splay() -> None:
    assert next_update_time("0 0 3 * * *", NOW, 0) == datetime(
        2026, 11, 26, 3, 0, 0, tzinfo=timezone.utc
    )
    assert next_update_time("15 */10 * * * *", NOW, 0) == datetime(
        2026, 11, 26, 3, 0, 15, tzinfo=timezone.utc
    )


def test_splay_spreads_a_fleet_within_the_window() -> None:
    fire = datetime(2026, 11, 26, 3, 0, 0, tzinfo=timezone.utc)
    times = {next_update_time("0 0 3 * * *", NOW, 3600, random.Random(seed)) for seed in range(50)}
    assert all(fire <= t <= fire + timedelta(hours=1) for t in times if t)
    assert len(times) > 40  # not everyone at once


def test_empty_schedule_disables() -> None:
    assert next_update_time("", NOW, 3600) is None


@pytest.mark.parametrize("bad", ["0 3 * * *", "61 0 3 * * *", "a b c d e f"])
def test_bad_schedule_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError):
        next_update_time(bad, NOW, 0)
