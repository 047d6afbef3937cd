"""`python -m bench.soak`: a short soak with real faults loses and duplicates nothing, cleans up.

Drives the real thing end to end on loopback: assist-server, assist-mirror, assist-install,
assist-update, agent hosts of real agent daemons; the server, the mirror and an agent host are
SIGKILLed and restarted during the run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devkit.polling import processes_mentioning

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("soak")]


def soak_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p)
    return env


def work_dir(stderr: str) -> Path:
    """The soak's temporary directory, from its first stderr line."""
    match = re.search(r"work (\S+)", stderr)
    assert match, stderr
    return Path(match.group(1))


def processes_under(path: Path) -> list[str]:
    """Command lines of live processes that mention `path` (left-over soak children)."""
    return processes_mentioning(str(path))


def test_short_soak_loses_and_duplicates_nothing() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--duration", "20", "--agents", "20"]
        + ["--real-agents", "1", "--seed", "7", "--drain", "120"],
        cwd=REPO_ROOT,
        env=soak_env(),
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.stdout.strip(), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    detail = json.dumps(
        {k: report[k] for k in ("lost", "lost_details", "duplicates", "events")}, indent=1
    )
    assert report["lost"] == 0, detail
    assert report["duplicated"] == 0, detail
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report["kills"].get("server", 0) >= 1
    assert report["restarts"]["server"] == report["kills"]["server"]
    assert report["agents"] == 20 and report["real_agents"] == 1
    assert report["invocations_sent"] >= 40  # ~5/s for 20 s, minus calls during server outages
    expected = report["invocations_sent"] + report["invocations_created_unconfirmed"]
    assert report["results_received"] == expected
    assert report["script_runs"] >= report["statuses"].get("Success", 0) > 0
    assert report["updates"]["applied"] >= 1, report["updates"]
    assert "lost" in proc.stderr and "duplicated" in proc.stderr  # the human table
    work = work_dir(proc.stderr)
    assert not work.exists(), f"{work} left behind"
    assert processes_under(work) == []


def test_interrupted_soak_stops_everything() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.soak", "--duration", "120", "--agents", "10"]
        + ["--real-agents", "1", "--seed", "3"],
        cwd=REPO_ROOT,
        env=soak_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines = [proc.stderr.readline()]
    work = work_dir(lines[0])
    deadline = time.monotonic() + 150
    while "soaking" not in lines[-1] and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
    assert "soaking" in lines[-1], "".join(lines)
    assert processes_under(work), "the soak should be running processes by now"
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert out == ""
    assert not work.exists(), f"{work} left behind"
    assert processes_under(work) == []
