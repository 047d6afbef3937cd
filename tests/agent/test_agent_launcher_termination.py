"""Launcher and TerminationMode, end to end: the real agent (subprocess) and the real
assist-server, operated through the official SDK.

A stopped or timed-out task with TerminationMode ProcessTree leaves none of its processes: not
its background child, not a grandchild that called setsid (left the process group), not an
orphan whose parent already exited. With Process only the script's own process is killed and
its children keep running (the test kills them afterwards).
"""

from __future__ import annotations

import base64
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.realagent import AgentProcess, Sdk, register_agent, wait_until
from devkit.server import ServerHandle, start_server

pytestmark = pytest.mark.xdist_group("agent-e2e")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    with start_server(tmp_path_factory.mktemp("launcher-server")) as handle:
        yield handle


@pytest.fixture(scope="module")
def agent(
    server: ServerHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Sdk, str]]:
    key_id, secret = server.create_access_key(f"launcher-{uuid.uuid4().hex[:8]}")
    prefix = tmp_path_factory.mktemp("launcher-agent")
    instance_id = register_agent(server, key_id, secret, prefix)
    process = AgentProcess(prefix)
    process.wait_connected()
    try:
        yield Sdk(server, key_id, secret), instance_id
    finally:
        assert process.stop() == 0
        assert "Traceback" not in process.log()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def output_of(item: dict[str, object]) -> str:
    return base64.b64decode(str(item["Output"])).decode()


def test_invoke_with_a_launcher_runs_the_script_under_it(agent: tuple[Sdk, str]) -> None:
    sdk, instance = agent
    invoke = sdk.run_script('echo "FOO=$FOO"', instance, Launcher="env FOO=bar /bin/sh -x")
    item = sdk.wait_result(invoke, instance, ("Success", "Failed"))
    assert item["InvocationStatus"] == "Success", item
    assert output_of(item) == "+ echo FOO=bar\nFOO=bar\n"  # sh -x traced it; env set FOO
    assert item["Launcher"] == "env FOO=bar /bin/sh -x"
    assert item["TerminationMode"] == "Process"


def test_a_commands_launcher_places_the_script_where_asked(agent: tuple[Sdk, str]) -> None:
    from aliyunsdkecs.request.v20140526 import CreateCommandRequest, InvokeCommandRequest

    sdk, instance = agent
    launcher = '/bin/sh -c \'echo "$1"; . "$1"\' launcher {{ACS::ScriptFileName|Ext(".task")}}'
    command_id = sdk.do(
        CreateCommandRequest.CreateCommandRequest(),
        Name="launched",
        Type="RunShellScript",
        CommandContent=b64("echo from-the-script"),
        Launcher=launcher,
    )["CommandId"]
    invoke = sdk.do(
        InvokeCommandRequest.InvokeCommandRequest(),
        CommandId=command_id,
        InstanceIds=[instance],
        Timed=False,
    )["InvokeId"]
    item = sdk.wait_result(invoke, instance, ("Success", "Failed"))
    first, second = output_of(item).splitlines()
    assert first.endswith(f"{invoke}-0.task") and os.path.isabs(first)
    assert second == "from-the-script"
    assert not Path(first).exists()  # the script file is removed after the run
    assert item["Launcher"] == launcher


def test_a_launcher_that_cannot_start_is_a_clear_failure(agent: tuple[Sdk, str]) -> None:
    sdk, instance = agent
    invoke = sdk.run_script("echo never", instance, Launcher="/nonexistent/interpreter -u")
    item = sdk.wait_result(invoke, instance, ("Success", "Failed"))
    assert (item["InvocationStatus"], item["ErrorCode"]) == ("Failed", "ExecutionException")
    assert "/nonexistent/interpreter" in str(item["ErrorInfo"])


def marked(mark: str) -> dict[int, str]:
    """Live processes (pid: command line) whose environment holds TESTMARK=mark."""
    found = {}
    needle = f"TESTMARK={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if state != "Z":
            found[int(entry.name)] = cmdline
    return found


def family_script(mark: str, pids: Path) -> str:
    """A background child, a grandchild that leaves the group (setsid) under a waiting parent,
    and an orphan in its own session whose parent exits at once; then the script waits."""
    return f"""export TESTMARK={mark}
sleep 300 & echo $! > {pids}/child
sh -c 'setsid sleep 301 & echo $! > {pids}/grandchild; wait' &
(setsid sleep 302 & echo $! > {pids}/orphan)
echo $$ > {pids}/script
echo ready
sleep 303
"""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize(
    ("mode", "end"), [("ProcessTree", "stop"), ("ProcessTree", "timeout"), ("Process", "stop")]
)
def test_termination_mode_decides_what_a_stop_or_timeout_kills(
    agent: tuple[Sdk, str], tmp_path: Path, mode: str, end: str
) -> None:
    sdk, instance = agent
    mark = uuid.uuid4().hex
    names = ("child", "grandchild", "orphan", "script")
    extra = {"Timeout": 4} if end == "timeout" else {}
    invoke = sdk.run_script(family_script(mark, tmp_path), instance, TerminationMode=mode, **extra)
    try:
        assert wait_until(lambda: all((tmp_path / n).exists() for n in names))
        assert wait_until(lambda: all((tmp_path / n).read_text().strip() for n in names))
        pids = {n: int((tmp_path / n).read_text()) for n in names}
        assert all(alive(pid) for pid in pids.values())
        # 4 sleeps and the waiting sh (the script itself exported TESTMARK after its exec)
        assert wait_until(lambda: len(marked(mark)) == 5), marked(mark)
        if end == "stop":
            sdk.stop(invoke)
        final = "Terminated" if end == "stop" else "Timeout"
        item = sdk.wait_result(invoke, instance, (final,), timeout=30)
        assert item["TerminationMode"] == mode
        if end == "timeout":
            assert item["ErrorCode"] == "ExecutionTimeout"
        assert not alive(pids["script"])
        if mode == "ProcessTree":
            assert wait_until(lambda: not marked(mark), timeout=5), marked(mark)
        else:
            time.sleep(1)  # nothing else is killed, not even late
            left = marked(mark)
            assert {pids["child"], pids["grandchild"], pids["orphan"]} <= set(left)
            assert any(cmd == "sleep 303" for cmd in left.values())
    finally:
        for pid in marked(mark):
            os.kill(pid, signal.SIGKILL)
