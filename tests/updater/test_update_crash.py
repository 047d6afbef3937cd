"""The crash matrix: a real updater process SIGKILLs itself right after each journal phase
(ASSIST_UPDATE_CRASH_AT=<phase>, and `swap_midway` between the temp link and its rename). After
`recover`, current must be runnable (old or new), the journal finished and consistent, the agent
running the version current points at, and a fresh apply must work.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from updaterkit import make_updater

from common.layout import Layout, is_runnable
from common.service import ProcessManager
from devkit.fakepayload import LocalRepo
from updater import journal as jr
from updater.engine import FAILURE_COUNTED
from updater.policy import load_blocklist
from updater.recovery import recover
from updater.swap import read_pointer

DRIVER = Path(__file__).with_name("crashdriver.py")

# phase[/case] -> (target version, versions current may be on after recovery, journal phase
#           after, failures counted after recovery: once per attempt, however the kill fell, and
#           only for a health check that really failed: a kill during the health check of a
#           healthy version is no failure of it, recovery checks again and commits)
MATRIX = {
    jr.DOWNLOADING: ("1.1.0", {"1.0.0"}, jr.ABORTED, {}),
    jr.VERIFIED: ("1.1.0", {"1.0.0"}, jr.ABORTED, {}),
    jr.STAGED: ("1.1.0", {"1.0.0"}, jr.ABORTED, {}),
    "swap_midway": ("1.1.0", {"1.0.0"}, jr.ABORTED, {}),
    jr.SWAPPED: ("1.1.0", {"1.0.0"}, jr.ROLLED_BACK, {}),
    jr.HEALTH_CHECK: ("1.1.0", {"1.1.0"}, jr.COMMITTED, {}),
    f"{jr.HEALTH_CHECK}/broken": ("1.2.0", {"1.0.0"}, jr.ROLLED_BACK, {"1.2.0": 1}),
    jr.COMMITTED: ("1.1.0", {"1.1.0"}, jr.COMMITTED, {}),
    FAILURE_COUNTED: ("1.2.0", {"1.0.0"}, jr.ROLLED_BACK, {"1.2.0": 1}),
    jr.ROLLING_BACK: ("1.2.0", {"1.0.0"}, jr.ROLLED_BACK, {"1.2.0": 1}),
    jr.ROLLED_BACK: ("1.2.0", {"1.0.0"}, jr.ROLLED_BACK, {"1.2.0": 1}),
}


@pytest.mark.parametrize("phase", list(MATRIX))
def test_kill_at_phase_then_recover_leaves_runnable_current(
    prefix: Path, artifacts: dict[str, Path], phase: str
) -> None:
    version, expected_current, expected_phase, expected_failures = MATRIX[phase]
    phase = phase.split("/")[0]
    (prefix / "config").mkdir(exist_ok=True)  # recovery's own health check: quick, like the driver
    (prefix / "config" / "assist.toml").write_text("[update]\nhealth_timeout = 5.0\nsettle = 0.5\n")
    env = dict(os.environ, ASSIST_UPDATE_CRASH_AT=phase)
    dist = artifacts["1.1.0"].parent
    proc = subprocess.run(
        [sys.executable, str(DRIVER), str(prefix), str(dist), version],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    layout = Layout(prefix)
    killed_at = jr.load_journal(layout.state_dir)
    if phase == "swap_midway":
        assert killed_at.phase == jr.STAGED and list(prefix.glob(".current.*.tmp"))
    elif phase == FAILURE_COUNTED:  # counted, the journal not yet rolling_back
        assert killed_at.phase == jr.HEALTH_CHECK
        assert load_blocklist(layout.state_dir).failures == {"1.2.0": 1}
    else:
        assert killed_at.phase == phase

    result = recover(prefix, service=ProcessManager(prefix, stop_timeout=3))

    current = read_pointer(layout)
    assert current in expected_current and is_runnable(layout, current)
    journal = jr.load_journal(layout.state_dir)
    assert journal.finished and journal.phase == expected_phase
    assert result in ("nothing", "aborted", "rolled_back", "committed")
    assert load_blocklist(layout.state_dir).failures == expected_failures
    assert not list(prefix.glob(".current.*.tmp"))
    assert not list((prefix / "versions").glob(".staging-*"))
    assert ProcessManager(prefix).main_pid() is not None
    # and the machine is consistent enough to update again
    outcome = make_updater(prefix, LocalRepo({"1.1.0": artifacts["1.1.0"]})).apply("1.1.0")
    assert outcome.result in ("updated", "up_to_date") and read_pointer(layout) == "1.1.0"


def test_recover_repairs_missing_current(prefix: Path) -> None:
    (prefix / "current").unlink()
    assert recover(prefix, service=ProcessManager(prefix)) == "repaired"
    assert read_pointer(Layout(prefix)) == "1.0.0"
