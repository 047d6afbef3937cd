"""`--service none` tells the truth (issue 13.3): an agent that no service manager runs is either
restarted by the updater itself (its pid from state/health.json) or the update says plainly that
the new version is installed but not running; never "updated" while `assist-agent status` says
the agent is not running. Real agent processes (the fake payload's launcher) and the real
`assist-agent status` console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common.health import read_health
from common.layout import Layout
from common.platform import detect_platform, pid_alive
from common.service import NoManager, ProcessManager
from devkit.fakepayload import LocalRepo
from updater import journal as jr
from updater.engine import Updater, UpdateSettings
from updater.swap import read_pointer


def unmanaged_updater(prefix: Path, artifacts: dict[str, Path]) -> Updater:
    """The engine as `assist-update apply --service none` builds it."""
    return Updater(
        Layout(prefix),
        LocalRepo(artifacts),
        NoManager(prefix),
        UpdateSettings(
            os="linux",
            arch=detect_platform().arch,
            format="tar.gz",
            health_timeout=5.0,
            settle=0.3,
        ),
    )


def agent_status(prefix: Path) -> tuple[int, dict[str, Any]]:
    """`assist-agent status --json` as an operator runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "status", "--prefix", str(prefix), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, json.loads(proc.stdout)


def start_by_hand(prefix: Path) -> subprocess.Popen[bytes]:
    """`assist-agent run --prefix P` started from a shell (no service manager, no pidfile)."""
    ProcessManager(prefix, stop_timeout=3).stop()  # the fixture's managed agent goes away
    proc = subprocess.Popen(
        [str(prefix / "current" / "bin" / "assist-agent"), "run", "--prefix", str(prefix)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        record = read_health(Layout(prefix).health_file)
        if record is not None and record.pid == proc.pid:
            break
        time.sleep(0.05)
    assert not (prefix / "state" / "agent.pid").exists()
    return proc


def test_agent_started_by_hand_is_restarted_onto_the_new_version(
    prefix: Path, artifacts: dict[str, Path]
) -> None:
    by_hand = start_by_hand(prefix)
    try:
        outcome = unmanaged_updater(prefix, artifacts).apply("1.1.0")
        assert outcome.result == "updated", outcome.reason
        assert by_hand.wait(timeout=30) is not None  # the old agent was stopped by the updater
        code, status = agent_status(prefix)
        assert code == 0 and status["running"] and status["version"] == "1.1.0"
        assert status["pid"] != by_hand.pid and pid_alive(status["pid"])
        assert read_pointer(Layout(prefix)) == "1.1.0"
        assert jr.load_journal(prefix / "state").phase == jr.COMMITTED
    finally:
        if by_hand.poll() is None:
            by_hand.kill()
            by_hand.wait()


def test_no_agent_running_and_no_manager_says_installed_but_not_running(
    prefix: Path, artifacts: dict[str, Path]
) -> None:
    ProcessManager(prefix, stop_timeout=3).stop()
    outcome = unmanaged_updater(prefix, artifacts).apply("1.1.0")
    assert outcome.result == "installed"
    assert (
        "not running" in outcome.reason and f"assist-agent run --prefix {prefix}" in outcome.reason
    )
    code, status = agent_status(prefix)
    assert code == 3 and not status["running"]
    assert read_pointer(Layout(prefix)) == "1.1.0"
    assert jr.load_journal(prefix / "state").phase == jr.COMMITTED
    assert not (prefix / "state" / "agent.pid").exists()  # nothing was started behind our back
    assert not [p for p in os.listdir(prefix / "versions") if p.startswith(".staging")]
