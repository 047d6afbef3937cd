"""The original README's flow, unchanged, through the official SDK against a local server.

CreateCommand (echo 123) -> InvokeCommand -> DescribeInvocationResults until an instance's Output
is base64("123\\n"), with a scripted fake agent answering through the real agent API.
"""

from __future__ import annotations

import time

import pytest
from aliyunsdkecs.request.v20140526 import (
    CreateCommandRequest,
    DescribeInvocationResultsRequest,
    InvokeCommandRequest,
)
from serverkit import Api

from devkit.server import ServerHandle


def run_readme_flow(api: Api) -> dict:
    agent = api.agent()
    create = CreateCommandRequest.CreateCommandRequest()
    create.set_CommandContent("ZWNobyAxMjM=")
    create.set_Type("RunShellScript")
    create.set_Name("test")
    command_id = api.sdk(create)["CommandId"]
    assert command_id.startswith("c-")

    invoke = InvokeCommandRequest.InvokeCommandRequest()
    invoke.set_CommandId(command_id)
    invoke.set_InstanceIds([agent.instance_id])
    invoke.set_Timed(False)
    invoke_id = api.sdk(invoke)["InvokeId"]
    assert invoke_id.startswith("t-")

    assert [t["invoke_id"] for e in agent.poll(timeout=5) for t in e["tasks"]] == [invoke_id]
    assert agent.run_shell_tasks() == 1

    deadline = time.monotonic() + 20
    while True:
        describe = DescribeInvocationResultsRequest.DescribeInvocationResultsRequest()
        describe.set_InstanceId(agent.instance_id)
        describe.set_InvokeId(invoke_id)
        body = api.sdk(describe)
        items = body["Invocation"]["ResultLists"]["ResultItem"]
        if items and items[0]["Output"] == "MTIzCg==":
            break
        assert time.monotonic() < deadline, body
        time.sleep(0.2)
    current = body["Invocation"]["InvocationResults"]["InvocationResult"]
    assert current == items
    assert items[0]["InvocationStatus"] == "Success"
    assert items[0]["InvokeRecordStatus"] == "Finished"
    assert items[0]["ExitCode"] == 0
    assert items[0]["CommandId"] == command_id
    # the agent no longer gets the finished task
    assert agent.tasks()["run"] == []
    return body


def test_readme_flow_sqlite(api: Api) -> None:
    run_readme_flow(api)


@pytest.mark.postgres
def test_readme_flow_postgres(pg_server: ServerHandle) -> None:
    key_id, secret = pg_server.create_access_key("readme")
    run_readme_flow(Api(pg_server, key_id, secret))
