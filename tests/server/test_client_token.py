"""ClientToken: a retried create-type call returns the first answer and runs nothing again;
the same token with other parameters is refused; concurrent retries create exactly one."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from serverkit import Api, run_sql

from devkit.fixtures import server_fixture
from devkit.realagent import AgentProcess, Sdk, register_agent
from devkit.server import ServerHandle

ECHO_A = {"Name": "a", "Type": "RunShellScript", "CommandContent": "ZWNobw=="}


def account_of(api: Api) -> str:
    rows = run_sql(
        api.server, "SELECT account FROM access_keys WHERE access_key_id = ?", api.key_id
    )
    return str(rows[0][0])


def count(api: Api, table: str) -> int:
    rows = run_sql(api.server, f"SELECT count(*) FROM {table} WHERE account = ?", account_of(api))
    return int(rows[0][0])


def new_command(api: Api, script: str = "ZWNobyAxMjM=") -> str:
    body = api.ok("CreateCommand", Name="t", Type="RunShellScript", CommandContent=script)
    return str(body["CommandId"])


def test_create_command_retry_returns_the_first_command(api: Api) -> None:
    token = uuid.uuid4().hex
    first = api.ok("CreateCommand", **ECHO_A, ClientToken=token)
    again = api.ok("CreateCommand", **ECHO_A, ClientToken=token)
    assert again["CommandId"] == first["CommandId"]
    assert again["RequestId"] != first["RequestId"]
    assert count(api, "commands") == 1


def test_same_token_other_parameters_is_a_mismatch(api: Api) -> None:
    token = uuid.uuid4().hex
    api.ok("CreateCommand", **ECHO_A, ClientToken=token)
    status, code = api.error("CreateCommand", **ECHO_A | {"Name": "b"}, ClientToken=token)
    assert (status, code) == (400, "IdempotentParameterMismatch")
    assert count(api, "commands") == 1
    assert run_sql(api.server, "SELECT name FROM commands WHERE account = ?", account_of(api)) == [
        ("a",)
    ]


def test_a_token_is_per_action(api: Api) -> None:
    token = uuid.uuid4().hex
    command_id = new_command(api)
    agent = api.agent()
    api.ok("CreateCommand", **ECHO_A, ClientToken=token)
    invoked = api.ok(
        "InvokeCommand",
        CommandId=command_id,
        **{"InstanceId.1": agent.instance_id},
        ClientToken=token,
    )
    assert invoked["InvokeId"].startswith("t-")


def test_without_a_token_each_call_creates(api: Api) -> None:
    for _ in range(2):
        api.ok("CreateCommand", Name="a", Type="RunShellScript", CommandContent="ZWNobw==")
    assert count(api, "commands") == 2


def test_bad_token_is_refused(api: Api) -> None:
    status, code = api.error(
        "CreateCommand",
        Name="a",
        Type="RunShellScript",
        CommandContent="ZWNobw==",
        ClientToken="x" * 65,
    )
    assert code == "InvalidParameter"
    status, code = api.error(
        "CreateCommand",
        Name="a",
        Type="RunShellScript",
        CommandContent="ZWNobw==",
        ClientToken="caf\u00e9",
    )
    assert code == "InvalidParameter"
    assert count(api, "commands") == 0


def test_invoke_retry_returns_the_same_invoke_id_and_queues_once(api: Api) -> None:
    command_id = new_command(api)
    agent = api.agent()
    token = uuid.uuid4().hex
    first = api.ok(
        "InvokeCommand",
        CommandId=command_id,
        **{"InstanceId.1": agent.instance_id},
        ClientToken=token,
    )
    again = api.ok(
        "InvokeCommand",
        CommandId=command_id,
        **{"InstanceId.1": agent.instance_id},
        ClientToken=token,
    )
    assert again["InvokeId"] == first["InvokeId"]
    assert count(api, "invocations") == 1
    assert len(agent.tasks()["run"]) == 1
    status, code = api.error(
        "InvokeCommand",
        CommandId=command_id,
        **{"InstanceId.1": agent.instance_id},
        ClientToken=token,
        Timeout=99,
    )
    assert code == "IdempotentParameterMismatch"
    assert count(api, "invocations") == 1


def test_run_command_retry_returns_both_ids_and_creates_once(api: Api) -> None:
    agent = api.agent()
    token = uuid.uuid4().hex
    args = {
        "Type": "RunShellScript",
        "CommandContent": "ZWNobw==",
        "KeepCommand": "true",
        "InstanceId.1": agent.instance_id,
        "ClientToken": token,
    }
    first = api.ok("RunCommand", **args)
    again = api.ok("RunCommand", **args)
    assert (again["CommandId"], again["InvokeId"]) == (first["CommandId"], first["InvokeId"])
    assert count(api, "invocations") == 1
    assert count(api, "commands") == 1


def test_create_activation_retry_returns_the_same_code(api: Api) -> None:
    token = uuid.uuid4().hex
    first = api.ok("CreateActivation", InstanceCount=2, ClientToken=token)
    again = api.ok("CreateActivation", InstanceCount=2, ClientToken=token)
    assert (again["ActivationId"], again["ActivationCode"]) == (
        first["ActivationId"],
        first["ActivationCode"],
    )
    assert count(api, "activations") == 1
    status, code = api.error("CreateActivation", InstanceCount=3, ClientToken=token)
    assert code == "IdempotentParameterMismatch"
    # the database keeps neither the token nor the activation code it answered in clear
    stored = run_sql(
        api.server,
        "SELECT token, result FROM client_tokens WHERE account = ? AND action = ?",
        account_of(api),
        "CreateActivation",
    )
    assert len(stored) == 1
    assert token not in str(stored) and first["ActivationCode"] not in str(stored)


def test_concurrent_retries_create_exactly_one(api: Api) -> None:
    command_id = new_command(api)
    agent = api.agent()
    token = uuid.uuid4().hex

    def invoke(_: int) -> str:
        return str(
            api.ok(
                "InvokeCommand",
                CommandId=command_id,
                **{"InstanceId.1": agent.instance_id},
                ClientToken=token,
            )["InvokeId"]
        )

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(invoke, range(16)))
    assert len(ids) == 1
    assert count(api, "invocations") == 1
    rows = run_sql(
        api.server, "SELECT count(*) FROM invocation_instances WHERE account = ?", account_of(api)
    )
    assert rows == [(1,)]


# --- counted on the VM: a real agent runs the retried invocation once ------------------------


server = server_fixture("token-server")


@pytest.mark.xdist_group("agent-e2e")
def test_retried_invoke_runs_once_on_the_vm(server: ServerHandle, tmp_path: Path) -> None:
    from aliyunsdkecs.request.v20140526 import CreateCommandRequest, InvokeCommandRequest

    key_id, secret = server.create_access_key(f"tok-{uuid.uuid4().hex[:8]}")
    instance_id = register_agent(server, key_id, secret, tmp_path / "prefix")
    sdk = Sdk(server, key_id, secret)
    ran = tmp_path / "ran.txt"
    import base64

    script = base64.b64encode(f"echo run >> {ran}\necho 123\n".encode()).decode()
    command_id = sdk.do(
        CreateCommandRequest.CreateCommandRequest(),
        CommandContent=script,
        Type="RunShellScript",
        Name="once",
    )["CommandId"]
    agent = AgentProcess(tmp_path / "prefix")
    try:
        agent.wait_connected()
        token = uuid.uuid4().hex
        ids = set()
        for _ in range(3):
            request = InvokeCommandRequest.InvokeCommandRequest()
            request.add_query_param("ClientToken", token)
            ids.add(
                sdk.do(request, CommandId=command_id, InstanceIds=[instance_id], Timed=False)[
                    "InvokeId"
                ]
            )
        assert len(ids) == 1
        invoke_id = ids.pop()
        item = sdk.wait_result(invoke_id, instance_id, ("Success", "Failed"))
        assert item["Output"] == "MTIzCg=="
        # one more retry after it finished: still the same invocation, nothing runs again
        request = InvokeCommandRequest.InvokeCommandRequest()
        request.add_query_param("ClientToken", token)
        again = sdk.do(request, CommandId=command_id, InstanceIds=[instance_id], Timed=False)
        assert again["InvokeId"] == invoke_id
        time.sleep(2)  # give a wrongly queued second run the chance to show up
    finally:
        agent.stop()
    assert ran.read_text() == "run\n"
    rows = run_sql(server, "SELECT count(*) FROM executions WHERE invoke_id = ?", invoke_id)
    assert rows == [(1,)]
