"""Several reports in one request (`POST /luban/api/v1/task/reports`, docs/agent-protocol.md):
each item is applied as its own request would be and gets that request's answer; one nonce for
the whole batch. Run against SQLite and PostgreSQL (the `api` fixture)."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import pytest
from serverkit import Api, run_sql
from test_agent_api import invoke, result

BATCH = "/luban/api/v1/task/reports"


def finish(invoke_id: str, output: bytes, exit_code: int = 0, **extra: Any) -> dict[str, Any]:
    now = int(time.time() * 1000)
    body = {
        "invoke_id": invoke_id,
        "execution_id": "0",
        "start_time": now - 5,
        "end_time": now,
        "exit_code": exit_code,
        "output": base64.b64encode(output).decode(),
        **extra,
    }
    return {"path": "/v1/task/finish", "body": body}


def chunk(invoke_id: str, offset: int, data: bytes) -> dict[str, Any]:
    body = {
        "invoke_id": invoke_id,
        "execution_id": "0",
        "start_time": int(time.time() * 1000),
        "offset": offset,
        "output": base64.b64encode(data).decode(),
    }
    return {"path": "/v1/task/running", "body": body}


def test_each_report_is_applied_in_order_and_answered_as_on_its_own(api: Api) -> None:
    agent, stranger = api.agent(), api.agent()
    first, second = invoke(api, agent), invoke(api, agent)
    foreign = invoke(api, stranger)
    items = [
        chunk(first, 0, b"hel"),
        chunk(second, 0, b"still running"),
        finish(first, b"hello\n"),
        finish(first, b"again\n", 3),  # a repeat: acknowledged, changes nothing
        finish(foreign, b"not mine\n"),  # another instance's task
        {"path": "/v1/task/list", "body": {}},  # not a report
        finish("nope", b""),  # malformed
    ]
    answers = agent.post(BATCH, {"reports": items})["results"]
    assert answers[:4] == [
        {"ok": True},
        {"ok": True},
        {"ok": True, "duplicate": False},
        {"ok": True, "duplicate": True},
    ]
    assert [(a["ok"], a["status"], a["code"]) for a in answers[4:]] == [
        (False, 404, "TaskNotFound"),
        (False, 400, "InvalidParameter"),
        (False, 400, "InvalidParameter"),
    ]
    done = result(api, first, agent)
    assert (done["InvocationStatus"], done["ExitCode"], done["Repeats"]) == ("Success", 0, 1)
    assert base64.b64decode(done["Output"]) == b"hello\n"
    running = result(api, second, agent)
    assert running["InvocationStatus"] == "Running"
    assert base64.b64decode(running["Output"]) == b"still running"
    assert result(api, foreign, stranger)["InvocationStatus"] == "Pending"
    left = run_sql(api.server, "SELECT COUNT(*) FROM output_chunks WHERE invoke_id = ?", first)
    assert left == [(0,)]  # the finish dropped the chunk it followed in the same batch


def test_a_file_report_travels_in_a_batch(api: Api) -> None:
    agent = api.agent()
    sent = api.ok(
        "SendFile",
        Name="motd",
        Content="aGVsbG8=",
        ContentType="Base64",
        TargetDir="/tmp",
        **{"InstanceId.1": agent.instance_id},
    )
    [file_task] = agent.tasks()["files"]
    report = {"invoke_id": file_task["invoke_id"], "status": "Failed", "error_code": "FileExists"}
    answers = agent.post(BATCH, {"reports": [{"path": "/v1/file/report", "body": report}]})
    assert answers["results"] == [{"ok": True, "duplicate": False}]
    described = api.ok("DescribeSendFileResults", InvokeId=sent["InvokeId"])
    [invocation] = described["Invocations"]["Invocation"]
    [instance] = invocation["InvokeInstances"]["InvokeInstance"]
    assert (instance["InvocationStatus"], instance["ErrorCode"]) == ("Failed", "FileExists")


def test_one_nonce_for_the_batch_a_replay_changes_nothing(api: Api) -> None:
    agent = api.agent()
    invoke_id = invoke(api, agent)
    nonce = uuid.uuid4().hex
    body = {"reports": [finish(invoke_id, b"once\n")]}
    assert agent.request("POST", BATCH, body, nonce=nonce).status_code == 200
    for again in (body, {"reports": [finish(invoke_id, b"twice\n"), finish(invoke_id, b"")]}):
        replay = agent.request("POST", BATCH, again, nonce=nonce)
        assert (replay.status_code, replay.json()["code"]) == (401, "ReplayedRequest")
    assert base64.b64decode(result(api, invoke_id, agent)["Output"]) == b"once\n"


@pytest.mark.parametrize(
    "body",
    [
        {"reports": []},
        {"reports": "finish"},
        {"nothing": True},
        ["not", "an", "object"],
        {"reports": [{"path": "/v1/task/finish", "body": {}}] * 101},
    ],
)
def test_a_malformed_batch_is_refused_whole(api: Api, body: object) -> None:
    agent = api.agent()
    response = agent.request("POST", BATCH, body)
    assert (response.status_code, response.json()["code"]) == (400, "InvalidParameter")


def test_a_batch_item_with_bad_fields_is_refused_alone(api: Api) -> None:
    agent = api.agent()
    invoke_id = invoke(api, agent)
    items = [
        {"path": "/v1/task/finish", "body": "not an object"},
        finish(invoke_id, b"", exit_code="zero"),  # type: ignore[arg-type]
        finish(invoke_id, b"ok\n", 0),
    ]
    answers = agent.post(BATCH, {"reports": items})["results"]
    assert [a["code"] for a in answers[:2]] == ["InvalidParameter", "InvalidParameter"]
    assert answers[2] == {"ok": True, "duplicate": False}
    assert result(api, invoke_id, agent)["InvocationStatus"] == "Success"
