"""Running real scripts: output, exit codes, timeouts, stops, users, directories, forks, stdin."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.output import Chunk
from agent.proctree import group_alive
from agent.runner import (
    Execution,
    Outcome,
    RunLimits,
    Task,
    TaskRejected,
    interpreter_for,
)


def run(tmp_path: Path, script: str, **fields: Any) -> tuple[Execution, Outcome]:
    task = Task(invoke_id=str(fields.pop("invoke_id", "t-1")), content=script.encode(), **fields)  # type: ignore[arg-type]
    limits = RunLimits(work_dir=tmp_path / "work", kill_grace=1.0, linger=0.3)
    execution = Execution(
        task, "0", {"InstanceId": "mi-7", "InvokeId": "t-1", "CommandId": "c-1"}, limits
    )
    return execution, execution.run()


def no_group_left(pgid: int) -> bool:
    deadline = time.time() + 5
    while time.time() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.05)
    return False


def test_echo_finishes_with_output_and_exit_code(tmp_path: Path) -> None:
    execution, outcome = run(tmp_path, "echo 123\n")
    assert (outcome.kind, outcome.exit_code, outcome.output, outcome.dropped) == (
        "finish",
        0,
        b"123\n",
        0,
    )
    assert list((tmp_path / "work").iterdir()) == []  # the script file is gone


def test_nonzero_exit_and_stderr_are_reported(tmp_path: Path) -> None:
    _, outcome = run(tmp_path, "echo out; echo err >&2; exit 7")
    assert outcome.kind == "finish" and outcome.exit_code == 7
    assert outcome.output == b"out\nerr\n"


def test_builtin_parameters_are_substituted(tmp_path: Path) -> None:
    _, outcome = run(
        tmp_path, "echo {{ACS::InstanceId}} {{ACS::InvokeId}} {{ACS::CommandId}} {{other}}"
    )
    assert outcome.output == b"mi-7 t-1 c-1 {{other}}\n"


def test_timeout_kills_the_whole_group_and_reports_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    execution, outcome = run(tmp_path, f"sleep 30 & echo $! > {pidfile}; sleep 30", timeout=1)
    assert outcome.kind == "timeout" and outcome.error_code == "ExecutionTimeout"
    # ends at the timeout (about 1 s plus the kill), not with the script; the margin below 30 s
    # is for a loaded CI machine, where 4 s against a 5 s script was too tight to be sure
    assert time.monotonic() - started < 15
    assert no_group_left(execution.pid)
    child = int(pidfile.read_text())
    assert (
        not Path(f"/proc/{child}").exists()
        or "Z" in Path(f"/proc/{child}/stat").read_text().split(")")[-1][:3]
    )


def test_stop_kills_and_reports_stopped(tmp_path: Path) -> None:
    task = Task(invoke_id="t-s", content=b"echo begin; sleep 30")
    execution = Execution(task, "0", {}, RunLimits(work_dir=tmp_path, kill_grace=1.0))
    threading.Timer(0.5, execution.stop).start()
    outcome = execution.run()
    assert outcome.kind == "stopped" and outcome.output == b"begin\n"
    assert no_group_left(execution.pid)


def test_fork_that_outlives_its_parent_does_not_hang_the_task(tmp_path: Path) -> None:
    """The child holds the output pipe until the test lets it go (no race with a fixed sleep):
    had the runner waited for it, the run would end only by its 20 s timeout, killing it."""
    go, marker = tmp_path / "go", tmp_path / "late"
    child = f"(while [ ! -e {go} ]; do sleep 0.05; done; touch {marker}) &"
    started = time.monotonic()
    _, outcome = run(tmp_path, f"{child} echo parent; exit 3", timeout=20)
    assert outcome.kind == "finish" and outcome.exit_code == 3 and outcome.output == b"parent\n"
    assert time.monotonic() - started < 10
    # the background child was left to finish its work (scripts start services this way)
    go.touch()
    deadline = time.time() + 10
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert marker.exists()


def test_stdin_is_dev_null(tmp_path: Path) -> None:
    _, outcome = run(tmp_path, "readlink /proc/$$/fd/0")
    assert outcome.output == b"/dev/null\n"


def test_stdin_is_dev_null_so_a_reading_script_does_not_hang(tmp_path: Path) -> None:
    _, outcome = run(tmp_path, 'read line; echo "got:$line:$?"; cat; echo done', timeout=5)
    assert outcome.kind == "finish" and outcome.output == b"got::1\ndone\n"


def test_big_output_keeps_the_tail_and_reports_dropped(tmp_path: Path) -> None:
    script = "head -c 1048576 /dev/zero | tr '\\0' 'a'; printf END"
    _, outcome = run(tmp_path, script, timeout=20)
    assert outcome.kind == "finish" and len(outcome.output) == 24 * 1024
    assert outcome.output.endswith(b"aaaEND") and outcome.dropped == 1048576 + 3 - 24 * 1024


def test_invalid_utf8_output_is_kept_as_bytes(tmp_path: Path) -> None:
    _, outcome = run(tmp_path, "printf 'a\\377\\376b'")
    assert outcome.output == b"a\xff\xfeb"


def test_chunks_stream_while_running(tmp_path: Path) -> None:
    chunks: list[Chunk] = []
    task = Task(invoke_id="t-c", content=b"echo one; sleep 0.6; echo two; sleep 0.6; echo three")
    limits = RunLimits(work_dir=tmp_path, chunk_interval=0.3, chunk_size=1024)
    outcome = Execution(task, "0", {}, limits, on_chunk=chunks.append).run()
    assert outcome.output == b"one\ntwo\nthree\n"
    assert len(chunks) >= 2
    streamed = b"".join(c.data for c in chunks)
    assert streamed in (b"one\ntwo\n", b"one\ntwo\nthree\n")  # the tail goes in the final report
    assert [c.offset for c in chunks] == sorted(c.offset for c in chunks)


def test_missing_working_dir_is_a_clear_error(tmp_path: Path) -> None:
    _, outcome = run(tmp_path, "pwd", working_dir=str(tmp_path / "nope"))
    assert (outcome.kind, outcome.error_code) == ("invalid", "DirectoryNotExists")
    assert "nope" in outcome.error_message


def test_working_dir_is_used(tmp_path: Path) -> None:
    _, outcome = run(tmp_path, "pwd", working_dir=str(tmp_path))
    assert outcome.output.decode().strip() == str(tmp_path)


def test_unknown_user_is_a_clear_error(tmp_path: Path) -> None:
    _, outcome = run(tmp_path, "id", username="no-such-user-xyz")
    assert (outcome.kind, outcome.error_code) == ("invalid", "UserNotExist")
    assert "no-such-user-xyz" in outcome.error_message


@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges needs root")
def test_runs_as_the_given_user(tmp_path: Path) -> None:
    _, outcome = run(tmp_path, "id -un; echo $HOME", username="nobody")
    assert outcome.kind == "finish", outcome
    name, home = outcome.output.decode().split()
    assert name == "nobody" and home == os.path.expanduser("~nobody")


@pytest.mark.parametrize("kind", ["RunBatScript", "RunPowerShellScript"])
def test_windows_types_are_not_applicable_here(tmp_path: Path, kind: str) -> None:
    _, outcome = run(tmp_path, "echo hi", type=kind)
    assert (outcome.kind, outcome.error_code) == ("invalid", "CommandNotApplicable")
    assert "Linux" in outcome.error_message


def test_windows_interpreters_are_chosen_on_windows(tmp_path: Path) -> None:
    # Windows itself cannot run here: only the command-line choice is checked.
    assert interpreter_for("RunBatScript", Path("x.bat"), windows=True) == ["cmd", "/c", "x.bat"]
    assert interpreter_for("RunPowerShellScript", Path("x.ps1"), windows=True)[-2:] == [
        "-File",
        "x.ps1",
    ]
    with pytest.raises(TaskRejected):
        interpreter_for("RunShellScript", Path("x.sh"), windows=True)


@pytest.mark.parametrize(
    ("launcher", "argv", "suffix"),
    [
        ("/bin/sh -x", ["/bin/sh", "-x", "S"], ".sh"),
        ("env 'A=b c' sh", ["env", "A=b c", "sh", "S"], ".sh"),
        ('python3 -u {{ACS::ScriptFileName|Ext(".py")}}', ["python3", "-u", "S"], ".py"),
        ("sh -c '. {{ACS::ScriptFileName}}'", ["sh", "-c", ". S"], ".sh"),
    ],
)
def test_launcher_command_lines(launcher: str, argv: list[str], suffix: str) -> None:
    from agent.launcher import launcher_argv, script_suffix

    assert launcher_argv(launcher, Path("S")) == argv
    assert script_suffix("RunShellScript", launcher) == suffix


def test_a_launcher_that_does_not_parse_is_invalid(tmp_path: Path) -> None:
    _, outcome = run(tmp_path, "echo never", launcher="sh -c 'unbalanced")
    assert (outcome.kind, outcome.error_code) == ("invalid", "InvalidLauncher")
    assert list((tmp_path / "work").iterdir()) == []  # the script file did not stay


def test_process_mode_timeout_kills_only_the_script(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    execution, outcome = run(
        tmp_path,
        f"sleep 30 & echo $! > {pidfile}; sleep 5",
        timeout=1,
        termination_mode="Process",
    )
    child = int(pidfile.read_text())
    try:
        assert outcome.kind == "timeout"
        assert outcome.error_message.endswith("was killed")
        assert group_alive(execution.pid)  # its children were left alone
        assert Path(f"/proc/{child}").exists()
    finally:
        os.killpg(execution.pid, 9)
    assert no_group_left(execution.pid)
