"""Service integration shipped in the payload: the SysV script really starts and stops the agent,
and the systemd unit passes `systemd-analyze verify` (systemd itself does not run here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from common.platform import pid_runs
from pkgbuild.payload import project_root

Builder = Callable[..., dict[str, Path]]
FAKE_AGENT_CLI = '''"""Stand-in agent: `run --prefix P` reports health, then idles like the real main loop."""
import json, os, sys, time

def main():
    prefix = sys.argv[sys.argv.index("--prefix") + 1]
    os.makedirs(os.path.join(prefix, "state"), exist_ok=True)
    with open(os.path.join(prefix, "state", "health.json"), "w") as f:
        json.dump({"version": "5.0.0", "pid": os.getpid(), "started": time.time(), "connected": False}, f)
    while True:
        time.sleep(1)

if __name__ == "__main__":
    main()
'''


@pytest.fixture
def installed_prefix(artifact_builder: Builder, tmp_path: Path) -> Path:
    """A prefix with a 5.0.0 payload (stand-in agent) unpacked and `current` pointing at it."""
    src = tmp_path / "src"
    shutil.copytree(project_root() / "common", src / "common",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (src / "agent").mkdir()
    (src / "agent" / "__init__.py").write_text("")
    (src / "agent" / "cli.py").write_text(FAKE_AGENT_CLI)
    tarball = artifact_builder("5.0.0", formats=("tar.gz",), source=src)["tar.gz"]
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    with tarfile.open(tarball) as tar:
        tar.extractall(prefix, filter="tar")
    os.symlink("versions/5.0.0", prefix / "current")
    return prefix


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie waiting for init to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def sysv(prefix: Path, action: str) -> subprocess.CompletedProcess[str]:
    script = prefix / "current/share/aliyun-assist.init"
    env = {**os.environ, "ALIYUN_ASSIST_PREFIX": str(prefix)}
    return subprocess.run(
        [str(script), action], env=env, capture_output=True, text=True, timeout=60
    )


def test_sysv_script_starts_reports_and_stops_the_agent(installed_prefix: Path) -> None:
    prefix = installed_prefix
    assert sysv(prefix, "status").returncode == 3
    started = sysv(prefix, "start")
    assert started.returncode == 0, started.stderr
    pid = int((prefix / "state/agent.pid").read_text())
    try:
        health = prefix / "state/health.json"
        deadline = time.monotonic() + 30
        while not health.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert json.loads(health.read_text())["pid"] == pid  # the launcher exec'd: same pid
        assert sysv(prefix, "status").returncode == 0
        assert "already running" in sysv(prefix, "start").stdout
        stopped = sysv(prefix, "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert not (prefix / "state/agent.pid").exists()
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(pid)
        assert sysv(prefix, "status").returncode == 3
    finally:
        if pid_runs(pid, str(prefix)):  # never a pid some other process has taken over since
            os.kill(pid, 9)


def test_sysv_script_leaves_a_reused_pid_alone(installed_prefix: Path) -> None:
    """The pidfile names a pid that now belongs to another program: not ours, not signalled."""
    other = subprocess.Popen(["sleep", "600"])
    try:
        (installed_prefix / "state").mkdir(exist_ok=True)
        (installed_prefix / "state/agent.pid").write_text(f"{other.pid}\n")
        assert sysv(installed_prefix, "status").returncode == 3
        stopped = sysv(installed_prefix, "stop")
        assert stopped.returncode == 0 and "not running" in stopped.stdout
        assert other.poll() is None
        assert not (installed_prefix / "state/agent.pid").exists()
    finally:
        other.kill()
        other.wait()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_unit_verifies(installed_prefix: Path, tmp_path: Path) -> None:
    unit = (installed_prefix / "current/share/aliyun-assist.service").read_text()
    assert "Restart=on-failure" in unit
    # point the unit's fixed prefix at our unpacked one so systemd can check the ExecStart path
    local = tmp_path / "aliyun-assist.service"
    local.write_text(unit.replace("/usr/local/share/aliyun-assist", str(installed_prefix)))
    ok = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(unit.replace("/usr/local/share/aliyun-assist", str(tmp_path / "nowhere")))
    assert (
        subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True).returncode
        != 0
    )
