"""Pure scheduling: next fire times for cron / rate / at, and reboot detection."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from agent.schedule import (
    At,
    Boot,
    Cron,
    InvalidFrequencyError,
    Rate,
    next_fire,
    parse_frequency,
    read_boot,
    should_run_on_boot,
)


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def test_cron_is_seconds_first() -> None:
    sched = parse_frequency("*/2 * * * * *")
    assert sched == Cron("*/2 * * * * *", "")
    assert next_fire(sched, ts("2026-01-01T00:00:00")) == ts("2026-01-01T00:00:02")
    assert next_fire(sched, ts("2026-01-01T00:00:03")) == ts("2026-01-01T00:00:04")


def test_cron_every_ten_minutes_and_weekend() -> None:
    assert next_fire(parse_frequency("0 */10 * * * *"), ts("2026-01-01T00:01:00")) == ts(
        "2026-01-01T00:10:00"
    )
    # 2026-01-01 is a Thursday: next Saturday 01:10 is 2026-01-03
    assert next_fire(parse_frequency("0 10 1 * * 6,0"), ts("2026-01-01T12:00:00")) == ts(
        "2026-01-03T01:10:00"
    )


def test_cron_with_timezone_fires_in_that_zone() -> None:
    sched = parse_frequency("0 0 3 * * * Asia/Shanghai")
    assert sched == Cron("0 0 3 * * *", "Asia/Shanghai")
    # 03:00 in Shanghai is 19:00 UTC the day before
    assert next_fire(sched, ts("2026-01-01T00:00:00")) == ts("2026-01-01T19:00:00")


@pytest.mark.parametrize(
    "bad",
    ["* * * * *", "61 * * * * *", "0 0 3 * * * Mars/Olympus", "rate(0m)", "at(tomorrow)", ""],
)
def test_bad_frequencies_are_refused_clearly(bad: str) -> None:
    with pytest.raises(InvalidFrequencyError):
        parse_frequency(bad)


def test_rate_counts_from_creation() -> None:
    sched = parse_frequency("rate(5m)")
    assert sched == Rate(300)
    created = ts("2026-01-01T00:00:00")
    assert next_fire(sched, created + 10, created) == created + 300
    assert next_fire(sched, created + 300, created) == created + 600
    assert next_fire(parse_frequency("rate(2h)"), created - 5, created) == created + 7200


def test_at_fires_once() -> None:
    sched = parse_frequency("at(2026-12-01T03:00:00Z)")
    assert sched == At(ts("2026-12-01T03:00:00"))
    assert next_fire(sched, ts("2026-11-01T00:00:00")) == ts("2026-12-01T03:00:00")
    assert next_fire(sched, ts("2026-12-01T03:00:00")) is None


def test_reboot_modes_tell_a_reboot_from_a_restart() -> None:
    boot_a, boot_b = Boot("aaaa", 100), Boot("bbbb", 200)
    # seen first in boot A: a service restart within A does not run it
    assert not should_run_on_boot("NextRebootOnly", "aaaa", boot_a, 0)
    assert not should_run_on_boot("EveryReboot", "aaaa", boot_a, 0)
    # after a reboot it runs
    assert should_run_on_boot("NextRebootOnly", "aaaa", boot_b, 0)
    assert should_run_on_boot("EveryReboot", "aaaa", boot_b, 3)
    # NextRebootOnly runs at most once in all
    assert not should_run_on_boot("NextRebootOnly", "aaaa", boot_b, 1)


def test_read_boot_reads_kernel_boot_id(tmp_path: Path) -> None:
    (tmp_path / "sys/kernel/random").mkdir(parents=True)
    (tmp_path / "sys/kernel/random/boot_id").write_text("abc-123\n")
    (tmp_path / "stat").write_text("cpu  1 2 3\nbtime 1700000000\n")
    assert read_boot(tmp_path) == Boot("abc-123", 1700000000)
    real = read_boot()
    assert real.boot_time > 0 and real.boot_id
