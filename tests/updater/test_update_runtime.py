"""Crash matrix for an update that changes the agent's runtime (versions/V/runtime, docs/runtime.md).

Each fake payload carries its own runtime/: a `bin/python3` wrapper and a RUNTIME-ID file; its
agent launcher execs that interpreter, which reports the runtime it is in health.json. 1.0.0 has
runtime "rt-a", 1.1.0 "rt-b", and 1.2.0 "rt-broken", whose python3 exits at once (so its health
check fails and the update rolls back). A real updater process is SIGKILLed after a journal phase;
after `recover` the running agent must run on the runtime of the version `current` points at,
and the old version's runtime must be there byte for byte. The updater swaps whole versions/V
directories, so this needs no updater code of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.layout import Layout
from common.service import ProcessManager
from devkit.fakepayload import INIT, UNIT, add_file, add_special
from updater import journal as jr
from updater.recovery import recover
from updater.swap import read_pointer

DRIVER = Path(__file__).with_name("crashdriver.py")
RUNTIMES = {"1.0.0": "rt-a", "1.1.0": "rt-b", "1.2.0": "rt-broken"}

AGENT = """#!/bin/sh
# fake assist-agent: runs on this payload's own runtime, like the real launcher
here=$(cd "$(dirname "$0")/.." && pwd -P)
ASSIST_FAKE_HERE="$here" exec "$here/runtime/bin/python3" -c '
import datetime, json, os, sys, time
here = os.environ["ASSIST_FAKE_HERE"]
prefix = sys.argv[sys.argv.index("--prefix") + 1]
state = {
    "version": open(os.path.join(here, "VERSION")).read().strip(),
    "runtime": open(os.path.join(here, "runtime", "RUNTIME-ID")).read().strip(),
    "pid": os.getpid(),
    "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "connected": True,
}
os.makedirs(os.path.join(prefix, "state"), exist_ok=True)
tmp = os.path.join(prefix, "state", ".health.tmp")
with open(tmp, "w") as f:
    json.dump(state, f)
os.replace(tmp, os.path.join(prefix, "state", "health.json"))
time.sleep(600)
' "$@"
"""


def runtime_python(runtime_id: str) -> str:
    """The runtime's bin/python3: the test's interpreter, or one that dies (a broken runtime)."""
    if runtime_id == "rt-broken":
        return "#!/bin/sh\necho 'broken runtime' >&2\nexit 1\n"
    return f'#!/bin/sh\nexec {sys.executable} "$@"\n'


def payload(version: str) -> dict[str, tuple[bytes, int]]:
    runtime_id = RUNTIMES[version]
    return {
        "bin/assist-agent": (AGENT.encode(), 0o755),
        "VERSION": (f"{version}\n".encode(), 0o644),
        "runtime/bin/python3": (runtime_python(runtime_id).encode(), 0o755),
        "runtime/RUNTIME-ID": (f"{runtime_id}\n".encode(), 0o644),
        "runtime/lib/python3.11/os.py": (f"# {runtime_id} stdlib\n".encode(), 0o644),
        "share/aliyun-assist.service": (UNIT.encode(), 0o644),
        "share/aliyun-assist.init": (INIT.encode(), 0o755),
    }


def make_tarball(out: Path, version: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        add_special(tar, "versions", tarfile.DIRTYPE)
        add_special(tar, f"versions/{version}", tarfile.DIRTYPE)
        for rel, (data, mode) in payload(version).items():
            add_file(tar, f"versions/{version}/{rel}", data, mode)
    return out


def tree_digest(root: Path) -> str:
    """sha256 over the relative paths, modes and contents of a directory."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(f"{path.relative_to(root)}:{path.stat().st_mode:o}\n".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A prefix with 1.0.0 (runtime rt-a) current and running under the process manager."""
    monkeypatch.delenv("ALIYUN_ASSIST_PYTHON", raising=False)
    monkeypatch.delenv("ASSIST_UPDATE_CRASH_AT", raising=False)
    root = tmp_path / "prefix"
    for rel, (data, mode) in payload("1.0.0").items():
        path = root / "versions" / "1.0.0" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    for sub in ("state", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "current").symlink_to("versions/1.0.0")
    ProcessManager(root, stop_timeout=3).start()
    yield root
    ProcessManager(root, stop_timeout=1).stop()


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    out = tmp_path / "dist"
    for version in ("1.1.0", "1.2.0"):
        make_tarball(out / f"aliyun-assist-{version}-linux-x86_64.tar.gz", version)
    return out


def running_runtime(prefix: Path) -> str:
    """The runtime the live agent reports (waits for its health.json to name a live pid)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            state = json.loads((prefix / "state" / "health.json").read_text())
            os.kill(state["pid"], 0)
            if ProcessManager(prefix).main_pid() == state["pid"]:
                return str(state["runtime"])
        except (OSError, ValueError, KeyError):
            pass
        assert time.monotonic() < deadline, "no live agent reported health"
        time.sleep(0.1)


# phase killed after -> (target version, version current is on after recovery)
MATRIX = {
    jr.STAGED: ("1.1.0", "1.0.0"),
    jr.SWAPPED: ("1.1.0", "1.0.0"),
    jr.HEALTH_CHECK: ("1.1.0", "1.1.0"),  # the new agent is healthy: recovery commits it
    jr.COMMITTED: ("1.1.0", "1.1.0"),
    jr.ROLLING_BACK: ("1.2.0", "1.0.0"),
}


@pytest.mark.parametrize("phase", list(MATRIX))
def test_kill_during_runtime_changing_update_recovers_matching_runtime(
    prefix: Path, dist: Path, phase: str
) -> None:
    version, expected = MATRIX[phase]
    old_runtime = tree_digest(prefix / "versions" / "1.0.0" / "runtime")
    assert running_runtime(prefix) == "rt-a"
    proc = subprocess.run(
        [sys.executable, str(DRIVER), str(prefix), str(dist), version],
        env=dict(os.environ, ASSIST_UPDATE_CRASH_AT=phase), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    recover(prefix, service=ProcessManager(prefix, stop_timeout=3))

    layout = Layout(prefix)
    assert read_pointer(layout) == expected
    assert jr.load_journal(layout.state_dir).finished
    assert running_runtime(prefix) == RUNTIMES[expected]
    assert tree_digest(prefix / "versions" / "1.0.0" / "runtime") == old_runtime
    current_runtime = (prefix / "current" / "runtime" / "RUNTIME-ID").read_text().strip()
    assert current_runtime == RUNTIMES[expected]
