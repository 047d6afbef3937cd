"""Health check: the new agent writes state/health.json (common/health.py) once its main loop runs.

Healthy = a health.json for the expected version appeared within `timeout`, written after the
restart, and its pid stayed alive for `settle` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from common.health import HealthRecord, read_health
from common.platform import pid_alive

WAITING = "waiting"
HEALTHY = "healthy"
DEAD = "dead"
WRONG_VERSION = "wrong_version"


def judge_health(
    record: HealthRecord | None, version: str, not_before: float, alive: Callable[[int], bool]
) -> str:
    """One look at the health record: waiting, healthy (so far), dead or wrong version."""
    if record is None or record.mtime < not_before - 1.0:
        return WAITING
    if record.version != version:
        return WRONG_VERSION
    return HEALTHY if alive(record.pid) else DEAD


def wait_healthy(
    path: Path,
    version: str,
    *,
    timeout: float,
    settle: float,
    not_before: float,
    service_pid: Callable[[], int | None] = lambda: None,
    alive: Callable[[int], bool] = pid_alive,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll: float = 0.005,
    grace: float = 2.0,
) -> tuple[bool, str]:
    """Wait for the agent of `version` to report and stay alive; returns (ok, reason).

    An agent whose process is gone before it reported (after `grace` seconds) fails at once
    rather than at the end of the timeout.
    """
    start = clock()
    deadline = start + timeout
    healthy_since: float | None = None
    while True:
        verdict = judge_health(read_health(path), version, not_before, alive)
        if verdict == HEALTHY:
            healthy_since = healthy_since if healthy_since is not None else clock()
            if clock() - healthy_since >= settle:
                return True, "healthy"
        elif healthy_since is not None or verdict == DEAD:
            return False, f"agent {version} died after it started"
        elif verdict == WRONG_VERSION:
            pass  # the old agent may still be shutting down
        if healthy_since is None and clock() - start > grace and service_pid() is None:
            return False, f"agent {version} exited before it reported health"
        if healthy_since is None and clock() > deadline:
            pid = service_pid()
            state = "not running" if pid is None else f"pid {pid} running but silent"
            return False, f"agent {version} did not report health within {timeout:g} s ({state})"
        sleep(poll)
