"""state/health.json: the running agent's own report, read by the updater and `assist-agent status`.

The agent writes it atomically once its main loop runs and again whenever its connection to the
server changes (docs/agent-state.md, Waiting for registration). The updater's health check
(updater/health.py) waits for a record of the new version whose pid stays alive.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.atomic import atomic_write_json
from common.version import agent_version

WAITING_FOR_REGISTRATION = "registration"  # `waiting` of an agent not registered yet


@dataclass(frozen=True)
class HealthRecord:
    """What the agent reports about itself."""

    version: str
    pid: int
    started: float = 0.0  # seconds since the epoch
    connected: bool = False
    waiting: str = ""  # WAITING_FOR_REGISTRATION, or "" once registered
    mtime: float = 0.0  # when the file was written (seconds since the epoch), set on reading

    @classmethod
    def of_this_process(cls, started: float, connected: bool, waiting: str = "") -> HealthRecord:
        """The record of the calling agent process."""
        return cls(agent_version(), os.getpid(), started, connected, waiting)


def health_document(record: HealthRecord) -> dict[str, Any]:
    """The JSON object written to health.json."""
    document: dict[str, Any] = {
        "version": record.version,
        "pid": record.pid,
        "started": record.started,
        "connected": record.connected,
        "updated": time.time(),
    }
    if record.waiting:
        document.update(registered=False, waiting=record.waiting)
    return document


def parse_health(data: object, mtime: float) -> HealthRecord | None:
    """A record from a parsed health.json; None unless it names a version and a pid."""
    if not isinstance(data, dict):
        return None
    try:
        version, pid = str(data["version"]), int(data["pid"])
    except (KeyError, TypeError, ValueError):
        return None
    started = data.get("started")
    return HealthRecord(
        version=version,
        pid=pid,
        started=float(started) if isinstance(started, (int, float)) else 0.0,
        connected=bool(data.get("connected", False)),
        waiting=str(data.get("waiting") or ""),
        mtime=mtime,
    )


def read_health(path: Path) -> HealthRecord | None:
    """The last health record; None while it is missing, half-written or unreadable."""
    try:
        mtime = path.stat().st_mtime
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return parse_health(data, mtime)


def write_health(path: Path, record: HealthRecord) -> None:
    """Atomically replace health.json with `record` (0600: it lives in state/)."""
    atomic_write_json(path, health_document(record), mode=0o600)
