"""state/health.json: the running agent's heartbeat for the updater and `assist-agent status`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from common.atomic import atomic_write_json
from common.version import agent_version

HEALTH_FILE = "health.json"


def write_health(state_dir: Path, started: float, connected: bool, **extra: Any) -> None:
    """Atomically write {version, pid, started, connected, …}."""
    record = {
        "version": agent_version(),
        "pid": os.getpid(),
        "started": started,
        "connected": connected,
        "updated": time.time(),
    }
    record.update(extra)
    atomic_write_json(state_dir / HEALTH_FILE, record, mode=0o600)


def read_health(state_dir: Path) -> dict[str, Any] | None:
    """The last health record, or None when there is none or it is unreadable."""
    try:
        value = json.loads((state_dir / HEALTH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
