"""Service-manager seam. The process manager runs real processes; systemd, SysV and Windows
cannot run here (no systemd as PID 1, no Windows): their command sequences are checked through a
recording runner passed to the constructor, and the unit/init files they write are real files."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from common.errors import ToolError, UsageError
from common.platform import pid_alive, pid_runs
from common.service import (
    NoManager,
    ProcessManager,
    SystemdManager,
    SysvManager,
    WindowsManager,
    make_service,
)
from devkit.polling import wait_until

SLEEP = 'exec python3 -c "import time; time.sleep(600)" "$@"'  # keeps --prefix in its cmdline
AGENT = f"""#!/bin/sh
@TRAP@
echo "python=${{ASSIST_PYTHON:-none}} args=$*"
{SLEEP}
"""


def _prefix(tmp_path: Path, ignore_term: bool = False) -> Path:
    prefix = tmp_path / "prefix"
    bin_dir = prefix / "versions" / "1.0.0" / "bin"
    bin_dir.mkdir(parents=True)
    script = AGENT.replace("@TRAP@", "trap '' TERM" if ignore_term else "")
    if ignore_term:  # a child sh keeps the trap; exec would drop it
        script = script.replace(SLEEP, "while :; do sleep 1; done")
    (bin_dir / "assist-agent").write_text(script)
    (bin_dir / "assist-agent").chmod(0o755)
    (prefix / "current").symlink_to("versions/1.0.0")
    share = prefix / "versions" / "1.0.0" / "share"
    share.mkdir()
    (share / "aliyun-assist.service").write_text(
        "[Service]\nExecStart=/usr/local/share/aliyun-assist/current/bin/assist-agent run "
        "--prefix /usr/local/share/aliyun-assist\n"
    )
    (share / "aliyun-assist.init").write_text(
        '#!/bin/sh\nPREFIX="/usr/local/share/aliyun-assist"\n'
    )
    return prefix


@pytest.fixture(autouse=True)
def _no_python_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALIYUN_ASSIST_PYTHON", raising=False)
    monkeypatch.delenv("ASSIST_PYTHON", raising=False)


_wait_for = functools.partial(wait_until, timeout=5.0, step=0.05)


def test_process_manager_starts_detached_and_stops(tmp_path: Path) -> None:
    prefix = _prefix(tmp_path)
    manager = ProcessManager(prefix, stop_timeout=3)
    manager.start()
    pid = manager.main_pid()
    assert pid and pid_alive(pid)
    assert int((prefix / "state" / "agent.pid").read_text()) == pid
    assert os.getsid(pid) == pid  # its own session: not killed with our terminal
    assert _wait_for(lambda: "args=run --prefix" in (prefix / "log" / "agent.log").read_text())
    manager.start()  # idempotent while running
    assert manager.main_pid() == pid
    manager.stop()
    assert not pid_alive(pid) and manager.main_pid() is None
    assert not (prefix / "state" / "agent.pid").exists()


def test_process_manager_restart_gives_new_pid(tmp_path: Path) -> None:
    manager = ProcessManager(_prefix(tmp_path), stop_timeout=3)
    manager.start()
    first = manager.main_pid()
    manager.restart()
    second = manager.main_pid()
    try:
        assert first and second and first != second and not pid_alive(first)
    finally:
        manager.stop()


def test_process_manager_kills_agent_that_ignores_term(tmp_path: Path) -> None:
    manager = ProcessManager(_prefix(tmp_path, ignore_term=True), stop_timeout=0.5)
    manager.start()
    pid = manager.main_pid()
    assert pid
    time.sleep(0.3)  # let the trap be installed
    manager.stop()
    assert not pid_alive(pid)


def test_process_manager_passes_python_override_to_launcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALIYUN_ASSIST_PYTHON", sys.executable)
    prefix = _prefix(tmp_path)
    manager = ProcessManager(prefix, stop_timeout=3)
    manager.start()
    try:
        log = prefix / "log" / "agent.log"
        assert _wait_for(lambda: f"python={sys.executable}" in log.read_text())
    finally:
        manager.stop()


def test_stale_pidfile_is_not_running(tmp_path: Path) -> None:
    prefix = _prefix(tmp_path)
    proc = subprocess.Popen(["true"])
    proc.wait()
    (prefix / "state").mkdir()
    (prefix / "state" / "agent.pid").write_text(f"{proc.pid}\n")
    assert ProcessManager(prefix).main_pid() is None


def test_pidfile_naming_an_unrelated_process_is_not_ours(tmp_path: Path) -> None:
    """A pid reused by another program after the agent died: never signalled."""
    prefix = _prefix(tmp_path)
    other = subprocess.Popen(["sleep", "600"])
    try:
        (prefix / "state").mkdir()
        (prefix / "state" / "agent.pid").write_text(f"{other.pid}\n")
        manager = ProcessManager(prefix, stop_timeout=0.5)
        assert manager.main_pid() is None
        manager.stop()
        assert other.poll() is None  # still running
        assert not (prefix / "state" / "agent.pid").exists()
    finally:
        other.kill()
        other.wait()


def test_pid_alive_sees_zombies_as_dead() -> None:
    proc = subprocess.Popen(["sleep", "0"])
    # exited, not yet reaped (WNOWAIT): a zombie; a fixed sleep could end before the exit
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    assert not pid_alive(proc.pid)
    os.kill(os.getpid(), 0)
    assert pid_alive(os.getpid())
    assert not pid_alive(0)


def test_pid_runs_sees_an_agent_in_the_middle_of_exec() -> None:
    """The launcher is a script that execs python; while execve swaps the image procfs shows an
    empty cmdline. Reading that as "not our agent" made start() spawn a second agent (a CI
    failure). The old check got this wrong in about half of these starts."""
    misses = 0
    launcher = 'exec python3 -c "import time; time.sleep(5)" "$@"'
    for _ in range(30):
        proc = subprocess.Popen(["sh", "-c", launcher, "sh", "--prefix", "/P"])
        try:
            started = time.monotonic()
            while time.monotonic() - started < 0.15:
                if not pid_runs(proc.pid, "/P"):
                    misses += 1
                    break
        finally:
            proc.kill()
            proc.wait()
    assert misses == 0
    assert not pid_runs(2, "/P")  # kthreadd: empty cmdline for good, not ours


class Recorder:
    """Stands in for systemctl / update-rc.d / sc.exe, which cannot run on this host."""

    def __init__(self, outputs: dict[str, str] | None = None, fail: str = "") -> None:
        self.calls: list[list[str]] = []
        self.outputs = outputs or {}
        self.fail = fail

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        joined = " ".join(argv)
        if self.fail and self.fail in joined:
            raise ToolError(f"{joined} failed")
        out = next((v for k, v in self.outputs.items() if k in joined), "")
        return subprocess.CompletedProcess(list(argv), 0, out, "")


def test_systemd_install_writes_unit_for_prefix_and_enables(tmp_path: Path) -> None:
    prefix = _prefix(tmp_path)
    runner = Recorder({"MainPID": "4242\n"})
    manager = SystemdManager(prefix, unit_dir=tmp_path / "units", runner=runner)
    manager.install()
    unit = (tmp_path / "units" / "aliyun-assist.service").read_text()
    assert f"ExecStart={prefix}/current/bin/assist-agent run --prefix {prefix}" in unit
    manager.restart()
    assert manager.main_pid() == 4242
    assert runner.calls[:3] == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "aliyun-assist.service"],
        ["systemctl", "restart", "aliyun-assist.service"],
    ]


def test_systemd_main_pid_zero_is_not_running(tmp_path: Path) -> None:
    manager = SystemdManager(_prefix(tmp_path), runner=Recorder({"MainPID": "0\n"}))
    assert manager.main_pid() is None


def test_systemd_failure_is_a_tool_error(tmp_path: Path) -> None:
    manager = SystemdManager(_prefix(tmp_path), runner=Recorder(fail="restart"))
    with pytest.raises(ToolError):
        manager.restart()


def test_sysv_install_writes_executable_init_script(tmp_path: Path) -> None:
    prefix = _prefix(tmp_path)
    runner = Recorder()
    manager = SysvManager(prefix, init_dir=tmp_path / "init.d", runner=runner)
    manager.install()
    script = tmp_path / "init.d" / "aliyun-assist"
    assert f'PREFIX="{prefix}"' in script.read_text() and os.access(script, os.X_OK)
    manager.start()
    assert runner.calls[-1] == [str(script), "start"]


def test_windows_service_commands_mocked(tmp_path: Path) -> None:
    """Mocked: sc.exe exists only on Windows."""
    runner = Recorder(
        {"queryex": "SERVICE_NAME: AliyunAssistService\n        PID                : 77\n"}
    )
    manager = WindowsManager(tmp_path, runner=runner)
    manager.install()
    manager.restart()
    assert manager.main_pid() == 77
    verbs = [call[1] for call in runner.calls]
    assert verbs == ["create", "failure", "stop", "start", "queryex"]


def test_none_manager_does_nothing(tmp_path: Path) -> None:
    manager = NoManager(tmp_path)
    manager.restart()
    assert manager.main_pid() is None and list(tmp_path.iterdir()) == []


def test_unknown_manager_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="launchd"):
        make_service("launchd", tmp_path)
    assert make_service("process", tmp_path).name == "process"
