"""The updater's own files in state/ are 0600 like the agent's (docs/agent-state.md)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from updater import journal as jr
from updater.lock import hold_lock
from updater.policy import count_failure


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 022, as systemd gives the agent and the agent gives the updater it starts."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_journal_blocklist_and_lock_are_written_0600(tmp_path: Path, open_umask: None) -> None:
    """They were 0644 (the atomic helper's default and the lock's mode): private only while
    state/ itself is 0700, and re-tightened by the agent at its next start."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with hold_lock(state):
        jr.save_journal(state, jr.Journal())
        count_failure(state, "1.4.0", 2, "attempt-1", "test")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
    assert {"update.json", "blocklist.json", "update.lock"} <= set(modes)
    assert all(mode == 0o600 for mode in modes.values()), modes
