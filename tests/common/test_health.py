"""state/health.json is one contract: what the agent writes is what the updater and status read."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from common.health import (
    WAITING_FOR_REGISTRATION,
    HealthRecord,
    parse_health,
    read_health,
    write_health,
)
from common.layout import Layout
from common.platform import pid_alive
from common.version import agent_version
from updater.health import HEALTHY, WAITING, judge_health


def test_the_record_the_agent_writes_is_judged_healthy_by_the_updater(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.state_dir.mkdir()
    write_health(layout.health_file, HealthRecord.of_this_process(123.0, connected=True))
    record = read_health(layout.health_file)
    assert record is not None
    assert (record.version, record.pid, record.started, record.connected, record.waiting) == (
        agent_version(),
        os.getpid(),
        123.0,
        True,
        "",
    )
    assert judge_health(record, agent_version(), not_before=0.0, alive=pid_alive) == HEALTHY
    assert stat.S_IMODE(layout.health_file.stat().st_mode) == 0o600
    assert [p.name for p in layout.state_dir.iterdir()] == ["health.json"]  # no temp file left


def test_an_agent_waiting_for_registration_says_so_on_disk(tmp_path: Path) -> None:
    path = Layout(tmp_path).health_file
    path.parent.mkdir()
    write_health(path, HealthRecord.of_this_process(1.0, False, WAITING_FOR_REGISTRATION))
    document = json.loads(path.read_text())
    assert document["waiting"] == WAITING_FOR_REGISTRATION and document["registered"] is False
    record = read_health(path)
    assert record is not None and record.waiting == WAITING_FOR_REGISTRATION


def test_a_missing_half_written_or_foreign_file_is_no_record(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    assert read_health(path) is None
    for text in ('{"version": "1.0', "[1, 2]", '{"version": "1.0"}', '{"pid": "x", "version": 1}'):
        path.write_text(text)
        assert read_health(path) is None, text
    assert judge_health(read_health(path), "1.0", 0.0, pid_alive) == WAITING


def test_a_launcher_written_record_with_a_date_for_started_still_counts() -> None:
    """The payload's shell launchers write `started` as a date; version and pid are what count."""
    data = {"version": "1.1.0", "pid": 7, "started": "2026-12-01T03:00:00Z", "connected": True}
    assert parse_health(data, 5.0) == HealthRecord("1.1.0", 7, 0.0, True, "", 5.0)
