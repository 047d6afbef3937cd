"""SendFile / DescribeSendFileResults on the real server (SQLite and PostgreSQL), with a
scripted agent speaking the agent API: fields, statuses, filters, ClientToken, tags, limits,
and the official SDKs (aliyun-python-sdk-ecs and the Tea SDK) calling SendFile."""

from __future__ import annotations

import base64
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from serverkit import Api, migrate_sqlite, run_sql, tea_client

from devkit.server import FakeAgent

REPORT = "/luban/api/v1/file/report"


def send(api: Api, *instances: str, **params: Any) -> str:
    values: dict[str, Any] = {
        "Name": "app.conf",
        "Content": "key=value\n",
        "TargetDir": "/etc/app",
    }
    values.update(params)
    for n, instance in enumerate(instances, 1):
        values[f"InstanceId.{n}"] = instance
    invoke_id = str(api.ok("SendFile", **values)["InvokeId"])
    assert invoke_id.startswith("f-")
    return invoke_id


def describe(api: Api, **params: Any) -> list[dict[str, Any]]:
    body = api.ok("DescribeSendFileResults", PageSize=50, **params)
    return list(body["Invocations"]["Invocation"])


def one(api: Api, invoke_id: str) -> dict[str, Any]:
    (item,) = describe(api, InvokeId=invoke_id)
    return item


def report(agent: FakeAgent, invoke_id: str, status: str = "Success", **extra: Any) -> Any:
    now = int(time.time() * 1000)
    body = {"invoke_id": invoke_id, "status": status, "start_time": now, "end_time": now, **extra}
    return agent.request("POST", REPORT, body)


def test_file_reaches_the_agent_and_its_report_shows_in_every_field(api: Api) -> None:
    agent = api.agent()
    content = b"\x00binary\xffdata\n"
    invoke = send(
        api,
        agent.instance_id,
        Name="data.bin",
        Description="the data",
        Content=base64.b64encode(content).decode(),
        ContentType="Base64",
        TargetDir="/opt/data",
        FileMode="0600",
        FileOwner="nobody",
        FileGroup="nogroup",
        Overwrite="true",
        Timeout=3,  # raised to 10, as the real API does
        **{"Tag.1.Key": "team", "Tag.1.Value": "ops"},
    )
    item = one(api, invoke)
    assert item["InvocationStatus"] == "Pending" and item["VmCount"] == 1
    assert {k: item[k] for k in ("Name", "Description", "ContentType", "TargetDir")} == {
        "Name": "data.bin",
        "Description": "the data",
        "ContentType": "Base64",
        "TargetDir": "/opt/data",
    }
    assert (item["FileMode"], item["FileOwner"], item["FileGroup"]) == ("0600", "nobody", "nogroup")
    assert item["Overwrite"] is True and base64.b64decode(item["Content"]) == content
    assert item["Tags"]["Tag"] == [{"TagKey": "team", "TagValue": "ops"}]
    assert item["CreationTime"].endswith("Z")
    (pending,) = item["InvokeInstances"]["InvokeInstance"]
    assert pending["InstanceId"] == agent.instance_id and pending["InvocationStatus"] == "Pending"
    assert pending["StartTime"] == "" and pending["CreationTime"]

    listing = agent.tasks("kick")
    assert listing["run"] == []
    (task,) = listing["files"]
    assert base64.b64decode(task["content"]) == content
    assert {k: task[k] for k in ("invoke_id", "name", "target_dir", "file_mode", "timeout")} == {
        "invoke_id": invoke,
        "name": "data.bin",
        "target_dir": "/opt/data",
        "file_mode": "0600",
        "timeout": 10,
    }
    assert (task["file_owner"], task["file_group"], task["overwrite"]) == (
        "nobody",
        "nogroup",
        True,
    )
    running = one(api, invoke)
    assert running["InvocationStatus"] == "Running"
    assert running["InvokeInstances"]["InvokeInstance"][0]["StartTime"]
    assert agent.tasks()["files"][0]["invoke_id"] == invoke  # listed until reported

    answer = report(agent, invoke)
    assert answer.status_code == 200 and answer.json() == {"ok": True, "duplicate": False}
    again = report(agent, invoke, "Failed", error_code="FileAlreadyExists")
    assert again.json() == {"ok": True, "duplicate": True}  # the first report wins
    done = one(api, invoke)
    assert done["InvocationStatus"] == "Success"
    (result,) = done["InvokeInstances"]["InvokeInstance"]
    assert result["InvocationStatus"] == "Success" and result["ErrorCode"] == ""
    assert result["FinishTime"] and result["UpdateTime"]
    assert "files" not in agent.tasks()  # nothing left to write


def test_failures_partial_failed_and_every_filter(api: Api) -> None:
    a, b = api.agent(), api.agent()
    both = send(api, a.instance_id, b.instance_id, Name="both.txt")
    only_a = send(api, a.instance_id, Name="a.txt", **{"Tag.1.Key": "env", "Tag.1.Value": "prod"})
    a.tasks(), b.tasks()
    report(a, both)
    failed = report(b, both, "Failed", error_code="FileAlreadyExists", error_message="exists")
    assert failed.status_code == 200
    item = one(api, both)
    assert item["InvocationStatus"] == "PartialFailed"
    results = {r["InstanceId"]: r for r in item["InvokeInstances"]["InvokeInstance"]}
    assert results[b.instance_id]["ErrorCode"] == "FileAlreadyExists"
    assert results[b.instance_id]["ErrorInfo"] == "exists"
    assert results[a.instance_id]["InvocationStatus"] == "Success"
    report(a, only_a, "Failed", error_code="UserGroupNotExists")
    assert one(api, only_a)["InvocationStatus"] == "Failed"

    def ids(**params: Any) -> set[str]:
        return {i["InvokeId"] for i in describe(api, **params)}

    assert ids() == {both, only_a}
    assert ids(Name="a.txt") == {only_a}
    assert ids(InstanceId=b.instance_id) == {both}
    assert ids(InvocationStatus="PartialFailed") == {both}
    assert ids(InvocationStatus="Failed") == {only_a}
    assert ids(InvocationStatus="Success") == set()
    assert ids(**{"Tag.1.Key": "env", "Tag.1.Value": "prod"}) == {only_a}
    assert ids(**{"Tag.1.Key": "env", "Tag.1.Value": "dev"}) == set()
    assert ids(RegionId="us-west-1") == set()  # resources belong to their region
    page = api.ok("DescribeSendFileResults", MaxResults=1)
    assert page["TotalCount"] == 2 and len(page["Invocations"]["Invocation"]) == 1
    following = api.ok("DescribeSendFileResults", MaxResults=1, NextToken=page["NextToken"])
    assert {page["Invocations"]["Invocation"][0]["InvokeId"]} | {
        following["Invocations"]["Invocation"][0]["InvokeId"]
    } == {both, only_a}
    listed = api.ok("ListTagResources", ResourceType="invocation", **{"ResourceId.1": only_a})
    assert listed["TagResources"]["TagResource"][0]["TagValue"] == "prod"
    api.ok("TagResources", ResourceType="invocation", **{"ResourceId.1": both, "Tag.1.Key": "k"})
    assert ids(**{"Tag.1.Key": "k"}) == {both}


def test_not_fetched_within_timeout_is_a_delivery_timeout(api: Api) -> None:
    agent = api.agent()
    invoke = send(api, agent.instance_id, Timeout=10)
    run_sql(
        api.server, "UPDATE send_file_instances SET deadline_ms = 5 WHERE invoke_id = ?", invoke
    )
    item = one(api, invoke)
    (result,) = item["InvokeInstances"]["InvokeInstance"]
    assert (item["InvocationStatus"], result["InvocationStatus"]) == ("Failed", "Timeout")
    assert result["ErrorCode"] == "DeliveryTimeout"
    assert "files" not in agent.tasks()  # too late: never written
    # an agent that wrote it after all replaces the guess with its real report
    assert report(agent, invoke).json() == {"ok": True, "duplicate": False}
    assert one(api, invoke)["InvocationStatus"] == "Success"


def test_windows_instances_are_invalid_not_silently_pending(api: Api) -> None:
    linux, windows = api.agent(), api.agent(os_type="windows")
    invoke = send(api, linux.instance_id, windows.instance_id)
    results = {r["InstanceId"]: r for r in one(api, invoke)["InvokeInstances"]["InvokeInstance"]}
    assert results[windows.instance_id]["InvocationStatus"] == "Invalid"
    assert results[windows.instance_id]["ErrorCode"] == "FilePathInvalid"
    assert "Windows" in results[windows.instance_id]["ErrorInfo"]
    assert "files" not in windows.tasks()
    assert results[linux.instance_id]["InvocationStatus"] == "Pending"


def test_reports_for_unknown_or_foreign_files_and_malformed_ones_are_refused(api: Api) -> None:
    a, b = api.agent(), api.agent()
    invoke = send(api, a.instance_id)
    assert report(b, invoke).status_code == 404  # not sent to b
    assert report(a, "f-unknown0000000").status_code == 404
    assert report(a, "t-notafile").status_code == 400
    assert report(a, invoke, "Running").status_code == 400
    assert report(a, invoke, "Failed", error_code="bad code!").status_code == 400
    assert one(api, invoke)["InvokeInstances"]["InvokeInstance"][0]["InvocationStatus"] == "Pending"


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"Content": ""}, "MissingParameter"),
        ({"Name": ""}, "MissingParameter"),
        ({"TargetDir": ""}, "MissingParameter"),
        ({"Content": "a" * (32 * 1024 + 1)}, "InvalidParam.Content"),
        (
            {"Content": base64.b64encode(b"a" * (32 * 1024 + 1)).decode(), "ContentType": "Base64"},
            "InvalidParam.Content",
        ),
        ({"Content": "not base64!", "ContentType": "Base64"}, "InvalidParameter"),
        ({"ContentType": "Gzip"}, "InvalidParameter"),
        ({"FileMode": "0999"}, "InvalidParam.FileMode"),
        ({"FileMode": "rwxr"}, "InvalidParam.FileMode"),
        ({"Name": "../etc/passwd"}, "InvalidParam.Name"),
        ({"TargetDir": "relative/dir"}, "InvalidParam.TargetDir"),
        ({"TargetDir": "C:\\Windows"}, "InvalidParam.TargetDir"),
        ({"Overwrite": "maybe"}, "InvalidParameter"),
        ({"ResourceGroupId": "rg-1"}, "InvalidParameter"),  # not implemented: refused
        ({"InstanceId.1": "mi-nosuchinstance"}, "InvalidInstance.NotFound"),
    ],
)
def test_send_file_validation(api: Api, params: dict[str, Any], code: str) -> None:
    agent = api.agent() if "InstanceId.1" not in params else None
    values: dict[str, Any] = {"Name": "n", "Content": "c", "TargetDir": "/tmp/x"}
    if agent is not None:
        values["InstanceId.1"] = agent.instance_id
    values.update(params)
    assert api.error("SendFile", **values)[1] == code
    assert describe(api) == []  # nothing stored
    assert api.error("SendFile", Name="n", Content="c", TargetDir="/t")[1] == (
        "MissingParam.InstanceId"
    )


def test_content_of_exactly_32_kb_is_accepted(api: Api) -> None:
    agent = api.agent()
    data = bytes(range(256)) * 128
    invoke = send(
        api, agent.instance_id, Content=base64.b64encode(data).decode(), ContentType="Base64"
    )
    assert base64.b64decode(agent.tasks()["files"][0]["content"]) == data
    assert one(api, invoke)["VmCount"] == 1


def test_client_token_returns_the_first_invoke_id_and_sends_once(api: Api) -> None:
    agent = api.agent()
    token = uuid.uuid4().hex
    first = send(api, agent.instance_id, ClientToken=token)
    assert send(api, agent.instance_id, ClientToken=token) == first
    assert (
        api.error(
            "SendFile",
            ClientToken=token,
            Name="other",
            Content="c",
            TargetDir="/t",
            **{"InstanceId.1": agent.instance_id},
        )[1]
        == "IdempotentParameterMismatch"
    )
    assert [i["InvokeId"] for i in describe(api)] == [first]
    assert [f["invoke_id"] for f in agent.tasks()["files"]] == [first]


def test_official_sdks_call_send_file_and_describe(api: Api) -> None:
    from aliyunsdkecs.request.v20140526 import DescribeSendFileResultsRequest, SendFileRequest

    agent = api.agent()
    request = SendFileRequest.SendFileRequest()
    request.set_InstanceIds([agent.instance_id])
    request.set_Name("sdk.txt")
    request.set_Content("from the old SDK\n")
    request.set_TargetDir("/tmp/sdk")
    request.set_FileMode("0640")
    request.set_Overwrite(True)
    invoke = api.sdk(request)["InvokeId"]
    describe_request = DescribeSendFileResultsRequest.DescribeSendFileResultsRequest()
    describe_request.set_InvokeId(invoke)
    body = api.sdk(describe_request)
    (item,) = body["Invocations"]["Invocation"]
    assert (item["Name"], item["FileMode"], item["Overwrite"]) == ("sdk.txt", "0640", True)

    from alibabacloud_ecs20140526 import models

    tea = tea_client(api.server, api.key_id, api.secret)
    sent = tea.send_file(
        models.SendFileRequest(
            region_id="cn-hangzhou",
            instance_id=[agent.instance_id],
            name="tea.txt",
            content=base64.b64encode(b"from Tea\n").decode(),
            content_type="Base64",
            target_dir="/tmp/tea",
            tag=[models.SendFileRequestTag(key="sdk", value="tea")],
        )
    )
    assert sent.body.invoke_id.startswith("f-")
    found = tea.describe_send_file_results(
        models.DescribeSendFileResultsRequest(
            region_id="cn-hangzhou",
            tag=[models.DescribeSendFileResultsRequestTag(key="sdk", value="tea")],
        )
    )
    (tea_item,) = found.body.invocations.invocation
    assert tea_item.invoke_id == sent.body.invoke_id and tea_item.name == "tea.txt"
    assert tea_item.invoke_instances.invoke_instance[0].invocation_status == "Pending"
    assert {f["invoke_id"] for f in agent.tasks()["files"]} == {invoke, sent.body.invoke_id}


def test_a_database_from_before_send_file_gets_its_tables(tmp_path: Path) -> None:
    db = tmp_path / "old.db"

    def migrate() -> dict[str, int]:
        return migrate_sqlite(db)

    def tables() -> set[str]:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            return {str(r[0]) for r in rows}

    migrate()
    for released in (6, 12):  # what a server before SendFile left behind (12: the last release)
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TABLE send_file_instances")
            conn.execute("DROP TABLE send_files")
            conn.execute("UPDATE schema_version SET version = ?", (released,))
        assert "send_files" not in tables()
        assert migrate()["before"] == released
        assert {"send_files", "send_file_instances"} <= tables()
