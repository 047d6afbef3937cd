"""The real agent (subprocess) against the real assist-server, operated through the official SDK.

Covers the README flow (echo 123 -> MTIzCg==), timed invocations, timeouts, and the fault cases:
kill -9 of the agent mid-task, the server down and back, 1 MB of output, a fork that outlives its
parent, and a script that reads stdin.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest

from devkit.fixtures import agent_env_fixture, server_fixture
from devkit.polling import wait_until
from devkit.realagent import AgentEnv, AgentProcess, group_members, server_executions
from devkit.server import ServerHandle, launch_server

pytestmark = pytest.mark.xdist_group("agent-e2e")


server = server_fixture("agent-server")


class Env(AgentEnv):
    """One registered agent prefix per test."""

    def __init__(self, server: ServerHandle, account_prefix: str, tmp_path: Path) -> None:
        super().__init__(server, account_prefix, tmp_path)
        self.prefix, self.instance_id = self.register("prefix")

    def start_agent(self, prefix: Path | None = None, server_url: str = "") -> AgentProcess:
        return super().start_agent(prefix or self.prefix, server_url)


env = agent_env_fixture("agent", Env)


def test_readme_flow_echo_123(env: Env) -> None:
    assert env.instance_id.startswith("mi-")
    agent = env.start_agent()
    invoke = env.sdk.run_script("echo 123", env.instance_id)
    item = env.sdk.wait_result(invoke, env.instance_id, ("Success", "Failed"))
    assert item["Output"] == "MTIzCg=="
    assert item["InvocationStatus"] == "Success" and item["ExitCode"] == 0
    assert item["InvokeRecordStatus"] == "Finished"
    assert server_executions(env.server, invoke) == [("0", "Success")]
    assert agent.proc.poll() is None
    assert agent.stop() == 0
    assert "Traceback" not in agent.log()


def test_timed_every_two_seconds(env: Env) -> None:
    env.start_agent()
    invoke = env.sdk.run_script(
        "date +%s", env.instance_id, Timed=True, RepeatMode="Period", Frequency="*/2 * * * * *"
    )
    assert wait_until(lambda: len(server_executions(env.server, invoke)) >= 4, timeout=20)
    env.sdk.stop(invoke)
    runs = [int(e) for e, status in server_executions(env.server, invoke) if status == "Success"]
    assert len(runs) >= 4
    assert all(r % 2 == 0 for r in runs)  # fire times of */2: even seconds
    assert runs == sorted(set(runs)) and runs[-1] - runs[0] <= 2 * (len(runs) + 1)
    time.sleep(3)
    after = server_executions(env.server, invoke)
    time.sleep(3)
    assert server_executions(env.server, invoke) == after  # stopped: no more runs


def test_timeout_kills_everything_and_reports_timeout(env: Env, tmp_path: Path) -> None:
    env.start_agent()
    pidfile = tmp_path / "pgid"
    invoke = env.sdk.run_script(
        f"echo $$ > {pidfile}; sleep 30 & sleep 5",
        env.instance_id,
        Timeout=1,
        TerminationMode="ProcessTree",  # the API's default, Process, leaves the children
    )
    item = env.sdk.wait_result(invoke, env.instance_id, ("Timeout", "Success", "Failed"))
    assert item["InvocationStatus"] == "Timeout"
    pgid = int(pidfile.read_text())
    assert wait_until(lambda: group_members(pgid) == [], timeout=5)


def test_kill9_mid_task_reports_agent_restarted_once(env: Env, tmp_path: Path) -> None:
    agent = env.start_agent()
    pidfile = tmp_path / "pgid"
    invoke = env.sdk.run_script(
        f"echo $$ > {pidfile}; echo started; sleep 60",
        env.instance_id,
        TerminationMode="ProcessTree",
    )
    env.sdk.wait_result(invoke, env.instance_id, ("Running",))
    agent.kill9()
    pgid = int(pidfile.read_text())
    assert group_members(pgid)  # the task outlived the killed agent…
    env.start_agent()
    item = env.sdk.wait_result(invoke, env.instance_id, ("Failed", "Success"))
    assert item["InvocationStatus"] == "Failed" and item["ErrorCode"] == "AgentRestarted"
    assert "restarted" in item["ErrorInfo"]
    assert base64.b64decode(item["Output"]) == b"started\n"  # printed before the agent died
    assert wait_until(
        lambda: group_members(pgid) == [], timeout=10
    )  # …until the new one cleaned up
    time.sleep(2)
    assert server_executions(env.server, invoke) == [("0", "Failed")]


def outage(env: Env, agent: AgentProcess, seconds: float) -> None:
    """Stop the server for `seconds`, then start it again on the same port and database."""
    port = int(env.server.url.rsplit(":", 1)[1])
    data_dir = Path(env.server.db_url[len("sqlite:///") :]).parent
    env.server.stop()
    try:
        time.sleep(seconds)
        assert agent.proc.poll() is None
    finally:
        restarted = launch_server(data_dir, env.server.db_url, port=port)
        env.server.process = restarted.process


def check_outage(env: Env, seconds: float) -> None:
    agent = env.start_agent()
    scripts = {
        env.sdk.run_script(f"echo begin{i}; sleep {1 + i}; echo survived{i}", env.instance_id): i
        for i in range(3)
    }
    for invoke in scripts:
        env.sdk.wait_result(invoke, env.instance_id, ("Running",))
    outage(env, agent, seconds)  # every task ends while the server is away
    for invoke, i in scripts.items():
        item = env.sdk.wait_result(invoke, env.instance_id, ("Success", "Failed"), timeout=120)
        assert base64.b64decode(item["Output"]) == f"begin{i}\nsurvived{i}\n".encode()
        assert server_executions(env.server, invoke) == [("0", "Success")]
        assert item["Repeats"] == 1
    # and the agent still takes new work
    invoke = env.sdk.run_script("echo after", env.instance_id)
    item = env.sdk.wait_result(invoke, env.instance_id, ("Success",), timeout=30)
    assert item["Output"] == base64.b64encode(b"after\n").decode()


def test_server_down_and_back_loses_nothing(env: Env) -> None:
    check_outage(env, 5)


@pytest.mark.slow
def test_server_down_for_a_minute_loses_nothing(env: Env) -> None:
    check_outage(env, 60)


def test_big_output_fork_and_stdin(env: Env, tmp_path: Path) -> None:
    env.start_agent()
    big = env.sdk.run_script(
        "head -c 1048576 /dev/zero | tr '\\0' 'a'; printf 'END\\377'", env.instance_id
    )
    marker = tmp_path / "forked"
    fork = env.sdk.run_script(f"(sleep 3; touch {marker}) & echo parent", env.instance_id)
    stdin = env.sdk.run_script("read x; cat; echo no-stdin:$?", env.instance_id)
    item = env.sdk.wait_result(big, env.instance_id, ("Success", "Failed"))
    output = base64.b64decode(item["Output"])
    assert len(output) == 24 * 1024 and output.endswith(b"aaEND\xff")
    assert item["Dropped"] == 1048576 + 4 - 24 * 1024
    item = env.sdk.wait_result(fork, env.instance_id, ("Success", "Failed"))
    assert item["InvocationStatus"] == "Success" and base64.b64decode(item["Output"]) == b"parent\n"
    assert not marker.exists()  # reported before the outliving child finished
    assert wait_until(marker.exists, timeout=10)
    item = env.sdk.wait_result(stdin, env.instance_id, ("Success", "Failed"), timeout=10)
    assert base64.b64decode(item["Output"]) == b"no-stdin:0\n"
    for invoke in (big, fork, stdin):
        assert len(server_executions(env.server, invoke)) == 1


def test_stop_invocation_kills_the_task(env: Env, tmp_path: Path) -> None:
    env.start_agent()
    pidfile = tmp_path / "pgid"
    invoke = env.sdk.run_script(
        f"echo $$ > {pidfile}; echo started; sleep 60",
        env.instance_id,
        TerminationMode="ProcessTree",
    )
    env.sdk.wait_result(invoke, env.instance_id, ("Running",))
    env.sdk.stop(invoke)
    item = env.sdk.wait_result(invoke, env.instance_id, ("Terminated", "Stopped"), timeout=20)
    assert base64.b64decode(item["Output"]) == b"started\n"
    assert wait_until(lambda: group_members(int(pidfile.read_text())) == [], timeout=10)


def test_kick_agent_update_runs_the_installed_updater(env: Env, tmp_path: Path) -> None:
    # The updater is another component: a recording stand-in is installed where the agent
    # looks for it (<prefix>/current/bin/assist-update).
    record = tmp_path / "updater-args"
    launcher = env.prefix / "versions" / "1.0.0" / "bin" / "assist-update"
    launcher.parent.mkdir(parents=True)
    launcher.write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    launcher.chmod(0o755)
    (env.prefix / "current").symlink_to(env.prefix / "versions" / "1.0.0")
    env.start_agent()
    response = env.server.call(
        "KickAgentUpdate",
        env.key_id,
        env.secret,
        AgentVersion="2.0.0",
        **{"InstanceId.1": env.instance_id},
    )
    assert response.status_code == 200, response.text
    assert wait_until(record.exists, timeout=20)
    time.sleep(0.5)
    assert record.read_text().split() == [
        "apply",
        "--prefix",
        str(env.prefix),
        "--version",
        "2.0.0",
    ]


@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges needs root")
def test_username_working_dir_and_type_errors_through_the_api(env: Env, tmp_path: Path) -> None:
    env.start_agent()
    as_nobody = env.sdk.run_script(
        "id -un; pwd", env.instance_id, Username="nobody", WorkingDir="/tmp"
    )
    no_user = env.sdk.run_script("id -un", env.instance_id, Username="no-such-user-xyz")
    no_dir = env.sdk.run_script("pwd", env.instance_id, WorkingDir=str(tmp_path / "missing"))
    control = env.sdk.run_script("echo hi", env.instance_id)
    bat = env.sdk.run_script("echo hi", env.instance_id, Type="RunBatScript")
    item = env.sdk.wait_result(as_nobody, env.instance_id, ("Success", "Failed", "Invalid"))
    assert item["InvocationStatus"] == "Success", item
    assert base64.b64decode(item["Output"]) == b"nobody\n/tmp\n"
    item = env.sdk.wait_result(no_user, env.instance_id, ("Success", "Failed", "Invalid"))
    assert (item["InvocationStatus"], item["ErrorCode"]) == ("Invalid", "UserNotExist")
    assert "no-such-user-xyz" in item["ErrorInfo"]
    item = env.sdk.wait_result(no_dir, env.instance_id, ("Success", "Failed", "Invalid"))
    assert (item["InvocationStatus"], item["ErrorCode"]) == ("Invalid", "DirectoryNotExists")
    item = env.sdk.wait_result(control, env.instance_id, ("Success", "Failed", "Invalid"))
    assert item["InvocationStatus"] == "Success"
    item = env.sdk.wait_result(bat, env.instance_id, ("Success", "Failed", "Invalid"))
    assert (item["InvocationStatus"], item["ErrorCode"]) == ("Invalid", "CommandNotApplicable")


def test_task_delivered_to_a_dead_agent_then_stopped_is_acknowledged(env: Env) -> None:
    # The agent lists its tasks and dies before starting one (simulated with the agent's own
    # client and identity); the operator stops the invocation meanwhile. The server then waits
    # in Stopping until the restarted agent acknowledges the stop.
    from agent.client import AgentClient
    from agent.identity import load_identity

    invoke = env.sdk.run_script("echo never", env.instance_id)
    identity = load_identity(env.prefix / "state")
    listed = AgentClient(env.server.url, identity).list_tasks("startup")
    assert [t["invoke_id"] for t in listed["run"]] == [invoke]
    env.sdk.stop(invoke)
    assert env.sdk.result(invoke, env.instance_id)["InvocationStatus"] == "Stopping"
    env.start_agent()
    item = env.sdk.wait_result(invoke, env.instance_id, ("Stopped", "Terminated"), timeout=20)
    assert item["InvocationStatus"] == "Stopped" and item["Output"] == ""
    assert server_executions(env.server, invoke) == [("stopped", "Stopped")]
