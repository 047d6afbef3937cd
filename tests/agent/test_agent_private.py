"""Other local users cannot list or read the agent's state: checked as the real user `nobody`.

The prefix sits in a world-traversable directory (as /usr/local/share is), so only the modes
of state/ and its files stand between `nobody` and the task output.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_fakeserver import register

from agent.private import tighten_tree
from devkit.realagent import agent_env

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="needs root to switch to nobody")


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, *argv], capture_output=True, text=True, timeout=30)


def assert_private(state: Path) -> None:
    """state/ and everything in it: dirs 0700, files 0600; `nobody` can list or read none."""
    entries = [state, *state.rglob("*")]
    for path in entries:
        mode = stat.S_IMODE(path.lstat().st_mode)
        expected = 0o700 if path.is_dir() else 0o600
        assert mode == expected, f"{path} is {mode:o}"
    assert as_nobody("ls", str(state)).returncode != 0
    for path in entries:
        if path.is_file():
            denied = as_nobody("cat", str(path))
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, path


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A 0755 directory under /tmp (pytest's tmp_path is 0700: nobody could not even try)."""
    base = Path(tempfile.mkdtemp(prefix="assist-private-", dir="/tmp"))
    os.chmod(base, 0o755)
    yield base
    subprocess.run(["rm", "-rf", str(base)], check=False)


def lay_out_old_install(prefix: Path, server_url: str, activation: tuple[str, str]) -> None:
    """A prefix as an older agent left it: state/ 0755, its files 0644 (identity aside)."""
    state = prefix / "state"
    old = os.umask(0o022)
    try:
        state.mkdir(parents=True)
        register(server_url, activation, state)
        for sub in ("spool", "tuf"):
            (state / sub).mkdir()
        (state / "spool" / "t-old-0.out").write_bytes(b"SECRET-OLD printed by a root task\n")
        (state / "tuf" / "root.json").write_text("{}")
        db = sqlite3.connect(state / "agent.db")
        db.execute("CREATE TABLE t (x)")
        db.commit()
        db.close()
    finally:
        os.umask(old)
    os.chmod(state, 0o755)
    assert stat.S_IMODE((state / "agent.db").stat().st_mode) == 0o644


def test_nobody_cannot_read_task_output_after_an_upgrade_of_an_open_prefix(
    public_dir: Path, fake_server
) -> None:  # type: ignore[no-untyped-def]
    control = public_dir / "control.txt"
    control.write_text("readable")
    os.chmod(control, 0o644)
    assert as_nobody("cat", str(control)).stdout == "readable"  # the check itself works

    prefix = public_dir / "prefix"
    lay_out_old_install(prefix, fake_server.url, fake_server.activation())
    assert as_nobody("cat", str(prefix / "state" / "spool" / "t-old-0.out")).returncode == 0
    (prefix / "log").mkdir()
    with open(prefix / "log" / "agent.log", "ab") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--prefix", str(prefix), "-v"]
            + ["--server", fake_server.url],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=agent_env(),
            start_new_session=True,
            umask=0o022,  # as systemd starts services
        )
    try:
        state = fake_server.state
        assert state.wait(lambda s: s.lists, timeout=30), (prefix / "log" / "agent.log").read_text()
        instance = next(iter(state.keys))
        task_file = public_dir / "made-by-task"
        script = f"echo SECRET-NEW; touch {task_file}; sleep 2; echo done\n"
        invoke = state.add_task(instance, script=script)
        spool = prefix / "state" / "spool"
        assert state.wait(lambda s: any(k[1] == invoke for k in s.chunks), timeout=30)
        assert [p for p in spool.iterdir() if p.name.startswith(invoke)]  # spooled right now
        assert_private(prefix / "state")  # while the task runs
        assert state.wait(lambda s: s.results_for(invoke), timeout=30)
        time.sleep(0.5)
        assert_private(prefix / "state")  # after it was reported
        wal = [p.name for p in (prefix / "state").iterdir() if p.name.startswith("agent.db-")]
        assert wal  # SQLite's -wal/-shm files exist and were checked above
        # the task itself runs with the umask the agent was started with, not the agent's 077
        assert stat.S_IMODE(task_file.stat().st_mode) == 0o644
    finally:
        agent.terminate()
        agent.wait(30)


def test_tighten_tree_leaves_links_and_foreign_files_alone(public_dir: Path) -> None:
    state = public_dir / "state"
    (state / "sub").mkdir(parents=True)
    (state / "sub" / "f").write_text("x")
    os.chmod(state / "sub" / "f", 0o755)
    outside = public_dir / "outside"
    outside.write_text("not ours to change")
    os.chmod(outside, 0o644)
    (state / "link").symlink_to(outside)
    foreign = state / "foreign"
    foreign.write_text("y")
    os.chown(foreign, 65534, 65534)
    os.chmod(foreign, 0o644)
    assert tighten_tree(state) == 3  # state, sub, sub/f
    assert stat.S_IMODE((state / "sub" / "f").stat().st_mode) == 0o700  # owner bits kept
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644  # the link was not followed
    assert stat.S_IMODE(foreign.stat().st_mode) == 0o644
    assert tighten_tree(state) == 0


def test_status_as_another_user_says_the_state_is_private(public_dir: Path) -> None:
    prefix = public_dir / "prefix"
    (prefix / "state").mkdir(parents=True, mode=0o700)
    os.chmod(prefix, 0o755)
    out = subprocess.run(
        [*NOBODY, sys.executable, "-m", "agent.cli", "status", "--prefix", str(prefix)],
        capture_output=True,
        text=True,
        env=agent_env(),
        cwd="/",
        timeout=60,
    )
    assert out.returncode != 0 and out.returncode != 3
    assert "private" in out.stderr and "root" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
