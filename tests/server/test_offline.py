"""One-shot tasks of instances that went offline fail (InstanceOffline) after Timeout + grace."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from serverkit import Api, pg_reachable, run_sql

from devkit.server import FakeAgent, ServerHandle, launch_server

# heartbeats every 1 s: offline after 3 s of silence; 1 s grace past a 1 s Timeout; sweep twice a second
FAST = ["--heartbeat-interval", "1", "--offline-grace", "1", "--chores-interval", "0.5"]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fast(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """A server that sweeps often, on each backend; an account on it."""
    db_url = None
    if request.param == "postgres":
        reason = pg_reachable()
        if reason:
            pytest.skip(reason)
        db_url = request.getfixturevalue("pg_url")
    server: ServerHandle = launch_server(tmp_path, db_url=db_url, extra_args=FAST)
    try:
        key_id, secret = server.create_access_key(f"acct-{uuid.uuid4().hex[:8]}")
        yield Api(server, key_id, secret)
    finally:
        server.stop()


def invoke(api: Api, agents: list[FakeAgent], **extra: str) -> str:
    command_id = api.ok(
        "CreateCommand", Name="c", Type="RunShellScript", CommandContent="c2xlZXAgMTA="
    )["CommandId"]
    ids = {f"InstanceId.{i}": a.instance_id for i, a in enumerate(agents, 1)}
    return str(
        api.ok("InvokeCommand", CommandId=command_id, Timeout="1", **ids, **extra)["InvokeId"]
    )


def status_of(api: Api, invoke_id: str, agent: FakeAgent) -> dict:
    body = api.ok("DescribeInvocationResults", InvokeId=invoke_id, InstanceId=agent.instance_id)
    return dict(body["Invocation"]["InvocationResults"]["InvocationResult"][0])


def test_silent_instance_task_fails_online_one_is_left_alone(fast: Api) -> None:
    silent, alive = fast.agent(), fast.agent()
    stop = threading.Event()

    def keep_alive() -> None:
        while not stop.wait(0.3):
            alive.heartbeat()

    beating = threading.Thread(target=keep_alive)
    beating.start()
    try:
        running = invoke(fast, [silent, alive])
        never_listed = invoke(fast, [silent])
        timed = invoke(fast, [silent], Timed="true", Frequency="rate(1h)")
        for agent in (silent, alive):  # both take the task and say it runs
            assert running in [t["invoke_id"] for t in agent.tasks()["run"]]
            agent.post(
                "/luban/api/v1/task/running",
                {"invoke_id": running, "execution_id": "0", "start_time": int(time.time() * 1000)},
            )
        # then `silent` dies without a word
        deadline = time.monotonic() + 30
        while status_of(fast, running, silent)["InvocationStatus"] == "Running":
            assert time.monotonic() < deadline, "the offline instance's task never failed"
            time.sleep(0.2)
        for invoke_id in (running, never_listed):
            failed = status_of(fast, invoke_id, silent)
            assert (failed["InvocationStatus"], failed["ErrorCode"]) == (
                "Failed",
                "InstanceOffline",
            )
            assert failed["FinishedTime"]
        # the online instance runs on, a timed task waits for its next fire time
        assert status_of(fast, running, alive)["InvocationStatus"] == "Running"
        assert status_of(fast, timed, silent)["InvocationStatus"] == "Scheduled"
    finally:
        stop.set()
        beating.join()

    rows = run_sql(
        fast.server,
        "SELECT status, terminal, error_code FROM executions "
        "WHERE invoke_id = ? AND instance_id = ?",
        running,
        silent.instance_id,
    )
    assert [(r[0], bool(r[1]), r[2]) for r in rows] == [("Failed", True, "InstanceOffline")]
    # the agent comes back: the task is no longer listed for it, but its real result (it was only
    # cut off, and ran the task) supersedes the server's guess; a retry of it is a duplicate
    assert [t["invoke_id"] for t in silent.tasks()["run"]] == [timed]
    assert silent.report("finish", running, b"late", 0)["duplicate"] is False
    real = status_of(fast, running, silent)
    assert (real["InvocationStatus"], real["ErrorCode"], real["ExitCode"]) == ("Success", "", 0)
    assert base64.b64decode(real["Output"]) == b"late"
    assert silent.report("finish", running, b"again", 1)["duplicate"] is True
    assert base64.b64decode(status_of(fast, running, silent)["Output"]) == b"late"
    rows = run_sql(
        fast.server,
        "SELECT status, terminal, error_code, exit_code FROM executions "
        "WHERE invoke_id = ? AND instance_id = ?",
        running,
        silent.instance_id,
    )
    assert [(r[0], bool(r[1]), r[2], r[3]) for r in rows] == [("Success", True, "", 0)]
    # and the instance finishing normally is not disturbed
    assert alive.report("finish", running, b"done", 0)["duplicate"] is False
    assert status_of(fast, running, alive)["InvocationStatus"] == "Success"
