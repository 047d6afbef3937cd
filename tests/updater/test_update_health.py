"""Health judgement and waiting (timeout, settle, early exit) with a fake clock."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from updater.health import (
    DEAD,
    HEALTHY,
    WAITING,
    WRONG_VERSION,
    HealthRecord,
    judge_health,
    wait_healthy,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def wait_healthy(self, path: Path, **options: Any) -> tuple[bool, str]:
        """`wait_healthy` for 1.1.0 on this clock (by default: any record's age, this process)."""
        options = {"not_before": 0, "service_pid": os.getpid} | options
        return wait_healthy(path, "1.1.0", clock=self, sleep=self.sleep, **options)


def _write(path: Path, version: str, pid: int) -> None:
    path.write_text(json.dumps({"version": version, "pid": pid, "started": 0, "connected": True}))


def test_judge_health() -> None:
    alive = {7: True, 8: False}.get
    rec = HealthRecord("1.1.0", 7, mtime=100.0)
    assert judge_health(None, "1.1.0", 0, alive) == WAITING  # type: ignore[arg-type]
    assert judge_health(rec, "1.1.0", 200.0, alive) == WAITING  # stale: written before restart
    assert judge_health(rec, "1.2.0", 0, alive) == WRONG_VERSION  # type: ignore[arg-type]
    assert judge_health(rec, "1.1.0", 0, alive) == HEALTHY  # type: ignore[arg-type]
    dead = HealthRecord("1.1.0", 8, mtime=100.0)
    assert judge_health(dead, "1.1.0", 0, alive) == DEAD  # type: ignore[arg-type]


def test_healthy_after_settle(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    _write(path, "1.1.0", os.getpid())
    clock = FakeClock()
    ok, reason = clock.wait_healthy(path, timeout=5, settle=2, not_before=time.time() - 1)
    assert ok and reason == "healthy" and clock.now >= 2


def test_silent_agent_times_out(tmp_path: Path) -> None:
    clock = FakeClock()
    ok, reason = clock.wait_healthy(tmp_path / "none.json", timeout=5, settle=1)
    assert not ok and "within 5 s" in reason and 5 <= clock.now < 6


def test_agent_that_exits_fails_fast(tmp_path: Path) -> None:
    clock = FakeClock()
    ok, reason = clock.wait_healthy(
        tmp_path / "none.json", timeout=60, settle=1, service_pid=lambda: None, grace=2
    )
    assert not ok and "exited" in reason and clock.now < 3


def test_agent_dying_during_settle_fails(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    _write(path, "1.1.0", 4242)
    clock = FakeClock()
    alive_until = 1.0
    ok, reason = clock.wait_healthy(
        path,
        timeout=5,
        settle=3,
        service_pid=lambda: 4242,
        alive=lambda pid: clock.now < alive_until,
    )
    assert not ok and "died" in reason
