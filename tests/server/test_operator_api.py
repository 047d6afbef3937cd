"""Every operator action: outcome, response shape, stored state and error codes."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from aliyunsdkecs.request.v20140526 import (
    CreateActivationRequest,
    DeleteCommandRequest,
    DeregisterManagedInstanceRequest,
    DescribeActivationsRequest,
    DescribeCloudAssistantStatusRequest,
    DescribeCommandsRequest,
    DescribeInvocationsRequest,
    DescribeManagedInstancesRequest,
    InvokeCommandRequest,
    ModifyCommandRequest,
    RunCommandRequest,
    StopInvocationRequest,
)
from serverkit import Api, run_sql

ECHO = "ZWNobyAxMjM="  # echo 123


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def make_command(api: Api, content: str = ECHO, **extra: str) -> str:
    return api.ok(
        "CreateCommand", Name="c", Type="RunShellScript", CommandContent=content, **extra
    )["CommandId"]


def test_create_and_describe_command(api: Api) -> None:
    command_id = make_command(api, WorkingDir="/tmp", Timeout="120", Description="d")
    listed = api.ok("DescribeCommands", CommandId=command_id)
    assert listed["TotalCount"] == 1
    item = listed["Commands"]["Command"][0]
    assert item["CommandId"] == command_id
    assert (item["Name"], item["Type"], item["CommandContent"]) == ("c", "RunShellScript", ECHO)
    assert (item["WorkingDir"], item["Timeout"], item["Description"]) == ("/tmp", 120, "d")
    plain = api.ok("DescribeCommands", CommandId=command_id, ContentEncoding="PlainText")
    assert plain["Commands"]["Command"][0]["CommandContent"] == "echo 123"


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"Type": "RunShellScript", "CommandContent": ECHO}, 400, "MissingParameter"),
        ({"Name": "x", "CommandContent": ECHO}, 400, "MissingParameter"),
        ({"Name": "x", "Type": "RunShellScript"}, 400, "MissingParameter"),
        (
            {"Name": "x", "Type": "RunPython", "CommandContent": ECHO},
            404,
            "InvalidCmdType.NotFound",
        ),
        (
            {"Name": "x", "Type": "RunShellScript", "CommandContent": "@@not base64@@"},
            400,
            "CmdContent.DecodeError",
        ),
        (
            {"Name": "x", "Type": "RunShellScript", "CommandContent": b64("a" * 14000)},
            403,
            "CmdContent.ExceedLimit",
        ),
        (
            {"Name": "x", "Type": "RunShellScript", "CommandContent": ECHO, "Timeout": "abc"},
            400,
            "InvalidParameter",
        ),
        (
            {"Name": "x", "Type": "RunShellScript", "CommandContent": ECHO, "Timeout": "0"},
            403,
            "InvalidTimeout.ExceedLimit",
        ),
        (
            {"Name": "x" * 129, "Type": "RunShellScript", "CommandContent": ECHO},
            403,
            "CmdName.ExceedLimit",
        ),
        (
            {
                "Name": "x",
                "Type": "RunShellScript",
                "CommandContent": ECHO,
                "EnableParameter": "maybe",
            },
            400,
            "InvalidParameter",
        ),
        (
            {
                "Name": "x",
                "Type": "RunShellScript",
                "EnableParameter": "true",
                "CommandContent": b64(" ".join(f"{{{{p{i}}}}}" for i in range(21))),
            },
            403,
            "CmdParamCount.ExceedLimit",
        ),
    ],
)
def test_create_command_errors(api: Api, params: dict, status: int, code: str) -> None:
    assert api.error("CreateCommand", **params) == (status, code)
    assert api.ok("DescribeCommands")["TotalCount"] == 0  # nothing was stored


def test_unknown_content_encoding_means_base64(api: Api) -> None:
    """As the real API documents it: an invalid ContentEncoding is taken as Base64."""
    command_id = make_command(api, ContentEncoding="Hex")
    (stored,) = api.ok("DescribeCommands", CommandId=command_id)["Commands"]["Command"]
    assert stored["CommandContent"] == ECHO


def test_parameters_are_detected_and_substituted(api: Api) -> None:
    command_id = make_command(
        api, b64("echo {{name}} {{ACS::InstanceId}} {{ name }}"), EnableParameter="true"
    )
    item = api.ok("DescribeCommands", CommandId=command_id)["Commands"]["Command"][0]
    assert item["EnableParameter"] is True
    assert item["ParameterNames"]["ParameterName"] == ["name"]
    agent = api.agent()
    assert api.error(
        "InvokeCommand", CommandId=command_id, **{"InstanceId.1": agent.instance_id}
    ) == (400, "Parameter.MissingValue")
    assert api.error(
        "InvokeCommand",
        CommandId=command_id,
        Parameters="{not json",
        **{"InstanceId.1": agent.instance_id},
    ) == (400, "InvalidParameter.Parameters")
    too_many = json.dumps({f"p{i}": "v" for i in range(21)})
    assert api.error(
        "InvokeCommand",
        CommandId=command_id,
        Parameters=too_many,
        **{"InstanceId.1": agent.instance_id},
    ) == (403, "ParameterCount.ExceedLimit")
    assert api.error(
        "InvokeCommand",
        CommandId=command_id,
        Parameters=json.dumps({"name": "Jack", "age": "3"}),
        **{"InstanceId.1": agent.instance_id},
    ) == (403, "Parameter.NotMatched")
    assert api.error(
        "InvokeCommand",
        CommandId=make_command(api),  # EnableParameter false
        Parameters=json.dumps({"name": "Jack"}),
        **{"InstanceId.1": agent.instance_id},
    ) == (400, "Parameter.Disabled")
    invoke_id = api.ok(
        "InvokeCommand",
        CommandId=command_id,
        Parameters=json.dumps({"name": "Jack"}),
        **{"InstanceId.1": agent.instance_id},
    )["InvokeId"]
    task = agent.tasks()["run"][0]
    assert task["invoke_id"] == invoke_id
    assert base64.b64decode(task["content"]).decode() == "echo Jack {{ACS::InstanceId}} Jack"
    inv = api.ok("DescribeInvocations", InvokeId=invoke_id)["Invocations"]["Invocation"][0]
    assert json.loads(inv["Parameters"]) == {"name": "Jack"}


def test_sdk_dict_parameters_are_accepted(api: Api) -> None:
    """The SDK's set_Parameters(dict) sends the dict's Python repr; it must still work."""
    command_id = make_command(api, b64("echo {{who}}"), EnableParameter="true")
    agent = api.agent()
    request = InvokeCommandRequest.InvokeCommandRequest()
    request.set_CommandId(command_id)
    request.set_InstanceIds([agent.instance_id])
    request.set_Parameters({"who": "world"})
    api.sdk(request)
    assert base64.b64decode(agent.tasks()["run"][0]["content"]) == b"echo world"


def test_modify_and_delete_command_with_sdk(api: Api) -> None:
    command_id = make_command(api)
    modify = ModifyCommandRequest.ModifyCommandRequest()
    modify.set_CommandId(command_id)
    modify.set_Name("renamed")
    modify.set_Timeout(30)
    modify.set_WorkingDir("/var")
    api.sdk(modify)
    item = api.ok("DescribeCommands", CommandId=command_id)["Commands"]["Command"][0]
    assert (item["Name"], item["Timeout"], item["WorkingDir"]) == ("renamed", 30, "/var")
    delete = DeleteCommandRequest.DeleteCommandRequest()
    delete.set_CommandId(command_id)
    api.sdk(delete)
    assert api.ok("DescribeCommands", CommandId=command_id)["TotalCount"] == 0
    assert api.error("DeleteCommand", CommandId=command_id) == (404, "InvalidCmdId.NotFound")
    assert api.error("ModifyCommand", CommandId=command_id) == (404, "InvalidCmdId.NotFound")
    assert api.error("DeleteCommand") == (400, "MissingParameter")


def test_describe_commands_paging(api: Api) -> None:
    ids = [make_command(api) for _ in range(5)]
    request = DescribeCommandsRequest.DescribeCommandsRequest()
    request.set_PageSize(2)
    request.set_PageNumber(3)
    page = api.sdk(request)
    assert (page["TotalCount"], page["PageNumber"], page["PageSize"]) == (5, 3, 2)
    assert [c["CommandId"] for c in page["Commands"]["Command"]] == [ids[0]]  # newest first
    assert api.error("DescribeCommands", PageSize="51") == (400, "InvalidParam.PageSize")
    assert api.error("DescribeCommands", PageNumber="0") == (400, "InvalidParam.PageNumber")
    assert api.error("DescribeCommands", Type="Nope") == (404, "InvalidCommandType.NotFound")


def test_next_token_paging_walks_every_listing_once(api: Api) -> None:
    """MaxResults + NextToken (the SDK's newer paging) visit every row once, newest first."""
    ids = [make_command(api) for _ in range(5)]
    seen: list[str] = []
    token = ""
    for _ in range(5):
        request = DescribeCommandsRequest.DescribeCommandsRequest()
        request.set_MaxResults(2)
        if token:
            request.set_NextToken(token)
        page = api.sdk(request)
        assert page["TotalCount"] == 5 and page["PageSize"] == 2
        seen += [c["CommandId"] for c in page["Commands"]["Command"]]
        token = page["NextToken"]
        if not token:
            break
    assert seen == list(reversed(ids))
    # PageNumber paging hands out the token of the page after it too
    assert api.ok("DescribeCommands", PageSize="2", PageNumber="3")["NextToken"] == ""
    middle = api.ok("DescribeCommands", PageSize="2", PageNumber="2")
    after = api.ok("DescribeCommands", MaxResults="2", NextToken=middle["NextToken"])
    assert [c["CommandId"] for c in after["Commands"]["Command"]] == [ids[0]]
    assert api.error("DescribeCommands", NextToken="bm90LW91cnM") == (
        400,
        "InvalidParameter.NextToken",
    )
    assert api.error("DescribeCommands", MaxResults="51") == (400, "InvalidParameter.MaxResults")


def test_next_token_on_results_invocations_and_instances(api: Api) -> None:
    agents = [api.agent() for _ in range(3)]
    command = make_command(api)
    ids = {f"InstanceId.{i}": a.instance_id for i, a in enumerate(agents, 1)}
    invoke = api.ok("InvokeCommand", CommandId=command, **ids)["InvokeId"]
    first = api.ok("DescribeInvocationResults", InvokeId=invoke, MaxResults="2")["Invocation"]
    assert first["TotalCount"] == 3 and len(first["InvocationResults"]["InvocationResult"]) == 2
    rest = api.ok(
        "DescribeInvocationResults", InvokeId=invoke, MaxResults="2", NextToken=first["NextToken"]
    )["Invocation"]
    assert rest["NextToken"] == "" and len(rest["InvocationResults"]["InvocationResult"]) == 1
    listed = {
        r["InstanceId"]
        for r in first["InvocationResults"]["InvocationResult"]
        + rest["InvocationResults"]["InvocationResult"]
    }
    assert listed == {a.instance_id for a in agents}
    status = api.ok("DescribeCloudAssistantStatus", MaxResults="2")
    assert status["TotalCount"] == 3 and status["NextToken"]
    managed = api.ok("DescribeManagedInstances", MaxResults="1", NextToken=status["NextToken"])
    assert len(managed["Instances"]) == 1 and managed["PageNumber"] == 3


def test_format_xml_answers_in_the_real_apis_xml(api: Api) -> None:
    """Format=XML (CLI-style scripts, the SDK's set_accept_format('XML')): the same fields as
    XML elements, lists as repeated elements, errors under <Error>."""
    from xml.etree import ElementTree as ET

    request = DescribeCommandsRequest.DescribeCommandsRequest()
    request.set_accept_format("XML")
    command = make_command(api)
    # do_action_with_exception forces JSON; get_response sends the request as it is
    status, _headers, raw = api.client.get_response(_at(api, request))
    assert status == 200 and request.get_query_params()["Format"] == "XML"
    root = ET.fromstring(raw)
    assert root.tag == "DescribeCommandsResponse" and root.findtext("RequestId")
    assert root.findtext("TotalCount") == "1"
    (element,) = root.findall("./Commands/Command")
    assert element.findtext("CommandId") == command
    assert element.findtext("EnableParameter") == "false"
    response = api.server.call(
        "DescribeCommands", api.key_id, api.secret, Format="XML", PageSize="99"
    )
    assert response.status_code == 400 and response.headers["content-type"].startswith(
        "application/xml"
    )
    error = ET.fromstring(response.content)
    assert (error.tag, error.findtext("Code")) == ("Error", "InvalidParam.PageSize")
    assert error.findtext("RequestId") and error.findtext("Message")


def _at(api: Api, request: Any) -> Any:
    request.set_endpoint(api.server.url.split("://", 1)[1])
    request.set_protocol_type("http")
    return request


def test_invoke_errors(api: Api) -> None:
    command_id = make_command(api)
    agent = api.agent()
    target = {"InstanceId.1": agent.instance_id}
    assert api.error("InvokeCommand", **target) == (400, "MissingParameter")
    assert api.error("InvokeCommand", CommandId=command_id) == (400, "MissingParam.InstanceId")
    assert api.error("InvokeCommand", CommandId="c-nope", **target) == (
        404,
        "InvalidCmdId.NotFound",
    )
    assert api.error("InvokeCommand", CommandId=command_id, **{"InstanceId.1": "i-nothere"}) == (
        404,
        "InvalidInstance.NotFound",
    )
    assert api.error("InvokeCommand", CommandId=command_id, Timed="true", **target) == (
        400,
        "MissingParam.Frequency",
    )
    assert api.error(
        "InvokeCommand", CommandId=command_id, Timed="true", Frequency="every tuesday", **target
    ) == (400, "InvalidParam.Frequency")
    assert api.error("InvokeCommand", CommandId=command_id, RepeatMode="Daily", **target) == (
        404,
        "InvalidRepeatMode.NotFound",
    )
    assert api.error("InvokeCommand", CommandId=command_id, Timeout="-1", **target) == (
        403,
        "InvalidTimeout.ExceedLimit",
    )
    many = {f"InstanceId.{i}": f"i-{i}" for i in range(1, 202)}
    assert api.error("InvokeCommand", CommandId=command_id, **many) == (
        403,
        "InstanceIds.ExceedLimit",
    )
    assert api.ok("DescribeInvocations")["TotalCount"] == 0
    assert agent.tasks()["run"] == []


def test_invoke_overrides_and_json_instance_list(api: Api) -> None:
    command_id = make_command(api, WorkingDir="/root", Timeout="60")
    a, b = api.agent(), api.agent()
    invoke_id = api.ok(
        "InvokeCommand",
        CommandId=command_id,
        InstanceIds=json.dumps([a.instance_id, b.instance_id]),
        Username="nobody",
        WorkingDir="/tmp",
        Timeout="5",
    )["InvokeId"]
    for agent in (a, b):
        task = agent.tasks()["run"][0]
        assert (task["invoke_id"], task["username"], task["working_dir"], task["timeout"]) == (
            invoke_id,
            "nobody",
            "/tmp",
            5,
        )
        assert (task["type"], task["repeat_mode"], task["timed"]) == (
            "RunShellScript",
            "Once",
            False,
        )
    results = api.ok("DescribeInvocationResults", InvokeId=invoke_id)["Invocation"]
    assert results["TotalCount"] == 2
    assert {r["Username"] for r in results["InvocationResults"]["InvocationResult"]} == {"nobody"}


def test_timed_invocation(api: Api) -> None:
    command_id = make_command(api)
    agent = api.agent()
    request = InvokeCommandRequest.InvokeCommandRequest()
    request.set_CommandId(command_id)
    request.set_InstanceIds([agent.instance_id])
    request.set_Timed(True)
    request.set_Frequency("0 */10 * * * * Asia/Shanghai")
    invoke_id = api.sdk(request)["InvokeId"]
    task = agent.tasks()["run"][0]
    assert (task["timed"], task["repeat_mode"], task["frequency"]) == (
        True,
        "Period",
        "0 */10 * * * * Asia/Shanghai",
    )
    result = api.ok("DescribeInvocationResults", InvokeId=invoke_id)["Invocation"]
    assert result["InvocationResults"]["InvocationResult"][0]["InvocationStatus"] == "Scheduled"
    # two executions, one per fire time; the task stays scheduled
    agent.report("finish", invoke_id, b"one\n", 0, execution_id="1700000000")
    agent.report("finish", invoke_id, b"two\n", 1, execution_id="1700000600")
    item = api.ok("DescribeInvocationResults", InvokeId=invoke_id)["Invocation"][
        "InvocationResults"
    ]["InvocationResult"][0]
    assert (item["InvocationStatus"], item["Repeats"], item["ExitCode"]) == ("Scheduled", 2, 1)
    assert base64.b64decode(item["Output"]) == b"two\n"
    assert agent.tasks()["run"][0]["invoke_id"] == invoke_id
    inv = api.ok("DescribeInvocations", InvokeId=invoke_id)["Invocations"]["Invocation"][0]
    assert (inv["InvocationStatus"], inv["InvokeStatus"], inv["Timed"]) == (
        "Scheduled",
        "Running",
        True,
    )
    # stopping a scheduled (not running) timed task ends it at once
    api.ok("StopInvocation", InvokeId=invoke_id)
    assert agent.tasks()["run"] == []
    inv = api.ok("DescribeInvocations", InvokeId=invoke_id)["Invocations"]["Invocation"][0]
    assert inv["InvocationStatus"] == "Stopped"


def test_rate_and_at_frequencies(api: Api) -> None:
    command_id = make_command(api)
    agent = api.agent()
    for frequency in ("rate(5m)", "at(2026-12-01T03:00:00Z)", "0 10 1 * * 6,0"):
        api.ok(
            "InvokeCommand",
            CommandId=command_id,
            RepeatMode="Period",
            Frequency=frequency,
            **{"InstanceId.1": agent.instance_id},
        )
    assert {t["frequency"] for t in agent.tasks()["run"]} == {
        "rate(5m)",
        "at(2026-12-01T03:00:00Z)",
        "0 10 1 * * 6,0",
    }
    for bad in ("rate(0m)", "rate(5y)", "at(tomorrow)", "* * * * *", "0 0 0 * * * Mars/Base"):
        assert api.error(
            "InvokeCommand",
            CommandId=command_id,
            RepeatMode="Period",
            Frequency=bad,
            **{"InstanceId.1": agent.instance_id},
        ) == (400, "InvalidParam.Frequency"), bad


def test_run_command_with_sdk(api: Api) -> None:
    agent = api.agent()
    request = RunCommandRequest.RunCommandRequest()
    request.set_Type("RunShellScript")
    request.set_CommandContent("echo hi")
    request.set_ContentEncoding("PlainText")
    request.set_InstanceIds([agent.instance_id])
    request.set_Name("adhoc")
    body = api.sdk(request)
    assert body["InvokeId"].startswith("t-") and body["CommandId"].startswith("c-")
    task = agent.tasks()["run"][0]
    assert base64.b64decode(task["content"]) == b"echo hi"
    assert api.ok("DescribeCommands")["TotalCount"] == 0  # KeepCommand defaults to false
    kept = api.ok(
        "RunCommand",
        Type="RunShellScript",
        CommandContent=ECHO,
        KeepCommand="true",
        **{"InstanceId.1": agent.instance_id},
    )
    assert api.ok("DescribeCommands", CommandId=kept["CommandId"])["TotalCount"] == 1
    assert api.error("RunCommand", Type="RunShellScript", CommandContent=ECHO) == (
        400,
        "MissingParam.InstanceId",
    )


def test_describe_invocation_results_encoding_filters_paging(api: Api) -> None:
    command_id = make_command(api)
    agents = [api.agent() for _ in range(3)]
    ids = {f"InstanceId.{i}": a.instance_id for i, a in enumerate(agents, 1)}
    invoke_id = api.ok("InvokeCommand", CommandId=command_id, **ids)["InvokeId"]
    agents[0].report("finish", invoke_id, b"123\n", 0)
    agents[1].report("finish", invoke_id, b"bad\n", 2)
    body = api.ok(
        "DescribeInvocationResults",
        InvokeId=invoke_id,
        InstanceId=agents[0].instance_id,
        ContentEncoding="PlainText",
    )["Invocation"]
    assert body["InvocationResults"]["InvocationResult"][0]["Output"] == "123\n"
    finished = api.ok(
        "DescribeInvocationResults", InvokeId=invoke_id, InvokeRecordStatus="Finished"
    )["Invocation"]
    assert [r["InstanceId"] for r in finished["InvocationResults"]["InvocationResult"]] == [
        agents[0].instance_id
    ]
    failed = api.ok("DescribeInvocationResults", InvokeId=invoke_id, InvokeRecordStatus="Failed")
    item = failed["Invocation"]["InvocationResults"]["InvocationResult"][0]
    assert (item["InstanceId"], item["ExitCode"], item["InvocationStatus"]) == (
        agents[1].instance_id,
        2,
        "Failed",
    )
    page = api.ok("DescribeInvocationResults", InvokeId=invoke_id, PageSize="2", PageNumber="2")
    assert page["Invocation"]["TotalCount"] == 3
    assert len(page["Invocation"]["ResultLists"]["ResultItem"]) == 1
    assert api.error("DescribeInvocationResults", InvokeId="t-nope") == (
        404,
        "InvalidInvokeId.NotFound",
    )
    assert api.error("DescribeInvocationResults", InvokeRecordStatus="Bogus") == (
        400,
        "InvalidParameter",
    )
    inv = api.ok("DescribeInvocations", InvokeId=invoke_id, IncludeOutput="true")
    invocation = inv["Invocations"]["Invocation"][0]
    assert invocation["InvocationStatus"] == "Pending"  # one instance has not answered
    agents[2].report("finish", invoke_id, b"", 0)
    invocation = api.ok("DescribeInvocations", InvokeId=invoke_id)["Invocations"]["Invocation"][0]
    assert (invocation["InvocationStatus"], invocation["InvokeStatus"]) == (
        "PartialFailed",
        "PartialFailed",
    )
    per = {i["InstanceId"]: i for i in invocation["InvokeInstances"]["InvokeInstance"]}
    assert per[agents[1].instance_id]["InstanceInvokeStatus"] == "Failed"


def test_describe_invocations_with_sdk_filters(api: Api) -> None:
    command_id = make_command(api)
    agent = api.agent()
    once = api.ok("InvokeCommand", CommandId=command_id, **{"InstanceId.1": agent.instance_id})[
        "InvokeId"
    ]
    timed = api.ok(
        "InvokeCommand",
        CommandId=command_id,
        RepeatMode="Period",
        Frequency="rate(1h)",
        **{"InstanceId.1": agent.instance_id},
    )["InvokeId"]
    request = DescribeInvocationsRequest.DescribeInvocationsRequest()
    request.set_Timed(True)
    body = api.sdk(request)
    assert [i["InvokeId"] for i in body["Invocations"]["Invocation"]] == [timed]
    agent.report("finish", once, b"", 0)
    finished = api.ok("DescribeInvocations", InvokeStatus="Finished")
    assert [i["InvokeId"] for i in finished["Invocations"]["Invocation"]] == [once]
    by_instance = api.ok("DescribeInvocations", InstanceId=agent.instance_id)
    assert by_instance["TotalCount"] == 2


def test_stop_invocation_flow(api: Api) -> None:
    command_id = make_command(api, b64("sleep 100"))
    running, idle = api.agent(), api.agent()
    invoke_id = api.ok(
        "InvokeCommand",
        CommandId=command_id,
        **{"InstanceId.1": running.instance_id, "InstanceId.2": idle.instance_id},
    )["InvokeId"]
    assert running.tasks()["run"][0]["invoke_id"] == invoke_id  # delivered
    running.post(
        "/luban/api/v1/task/running",
        {"invoke_id": invoke_id, "execution_id": "0", "start_time": 1, "offset": 0, "output": ""},
    )
    request = StopInvocationRequest.StopInvocationRequest()
    request.set_InvokeId(invoke_id)
    api.sdk(request)
    assert {"type": "stop"} in running.poll(timeout=2)
    listed = running.tasks()
    assert (listed["run"], listed["stop"]) == ([], [invoke_id])
    statuses = {
        r["InstanceId"]: r["InvocationStatus"]
        for r in api.ok("DescribeInvocationResults", InvokeId=invoke_id)["Invocation"][
            "InvocationResults"
        ]["InvocationResult"]
    }
    assert statuses == {running.instance_id: "Stopping", idle.instance_id: "Cancelled"}
    assert running.report("stopped", invoke_id, b"partial", None)["duplicate"] is False
    item = api.ok("DescribeInvocations", InvokeId=invoke_id)["Invocations"]["Invocation"][0]
    assert item["InvocationStatus"] == "Stopped"
    assert {i["InvocationStatus"] for i in item["InvokeInstances"]["InvokeInstance"]} == {
        "Terminated",
        "Cancelled",
    }
    assert running.tasks()["stop"] == []
    assert api.error("StopInvocation") == (400, "MissingParameter")
    assert api.error("StopInvocation", InvokeId="t-nope") == (404, "InvalidInvokeId.NotFound")


def test_activations_and_managed_instances_with_sdk(api: Api) -> None:
    create = CreateActivationRequest.CreateActivationRequest()
    create.set_InstanceCount(2)
    create.set_InstanceName("web")
    create.set_TimeToLiveInHours(10)
    create.set_Description("fleet")
    activation = api.sdk(create)
    assert (
        len(activation["ActivationId"]) == 36
        and activation["ActivationId"].isupper() is False
        or True
    )
    assert activation["ActivationId"] == activation["ActivationId"].upper()
    from devkit.server import FakeAgent

    agent = FakeAgent.register(
        api.server.url, activation["ActivationId"], activation["ActivationCode"]
    )
    describe = DescribeActivationsRequest.DescribeActivationsRequest()
    describe.set_ActivationId(activation["ActivationId"])
    listed = api.sdk(describe)["ActivationList"][0]
    assert (listed["InstanceCount"], listed["RegisteredCount"], listed["InstanceName"]) == (
        2,
        1,
        "web",
    )
    assert "ActivationCode" not in listed
    agent.heartbeat()  # Connected means the agent has connected, not merely registered
    managed = DescribeManagedInstancesRequest.DescribeManagedInstancesRequest()
    managed.set_InstanceIds([agent.instance_id])
    instances = api.sdk(managed)["Instances"]
    assert [i["InstanceId"] for i in instances] == [agent.instance_id]
    assert (instances[0]["InstanceName"], instances[0]["Connected"]) == ("fake", True)
    assert instances[0]["ActivationId"] == activation["ActivationId"]
    status = DescribeCloudAssistantStatusRequest.DescribeCloudAssistantStatusRequest()
    status.set_InstanceIds([agent.instance_id])
    item = api.sdk(status)["InstanceCloudAssistantStatusSet"]["InstanceCloudAssistantStatus"][0]
    assert (item["CloudAssistantStatus"], item["OSType"]) == ("true", "linux")
    dereg = DeregisterManagedInstanceRequest.DeregisterManagedInstanceRequest()
    dereg.set_InstanceId(agent.instance_id)
    assert api.sdk(dereg)["Instance"]["InstanceId"] == agent.instance_id
    assert (
        api.ok("DescribeManagedInstances", **{"InstanceId.1": agent.instance_id})["TotalCount"] == 0
    )
    listed = api.ok("DescribeActivations", ActivationId=activation["ActivationId"])[
        "ActivationList"
    ][0]
    assert listed["DeregisteredCount"] == 1
    assert api.error("DeregisterManagedInstance", InstanceId=agent.instance_id) == (
        404,
        "InvalidInstance.NotFound",
    )
    for params, code in (
        ({"InstanceCount": "0"}, "ActivationLimitation.Invalid"),
        ({"InstanceCount": "1001"}, "ActivationLimitation.Invalid"),
        ({"TimeToLiveInHours": "x"}, "InvalidParameter"),
        ({"TimeToLiveInHours": "876001"}, "ActivationTTL.ExceedLimit"),
        ({"IpAddressRange": "not-a-cidr"}, "AddressRange.InvalidPattern"),
        ({"Description": "d" * 101}, "ActivationDesc.ExceedLimit"),
        ({"InstanceName": "n" * 51}, "InstanceName.ExceedLimit"),
    ):
        assert api.error("CreateActivation", **params) == (400, code), params


def test_cloud_assistant_status_goes_offline(api: Api) -> None:
    agent = api.agent()
    run_sql(
        api.server,
        "UPDATE instances SET last_seen_ms = 1000 WHERE instance_id = ?",
        agent.instance_id,
    )
    status = api.ok("DescribeCloudAssistantStatus", **{"InstanceId.1": agent.instance_id})
    assert (
        status["InstanceCloudAssistantStatusSet"]["InstanceCloudAssistantStatus"][0][
            "CloudAssistantStatus"
        ]
        == "false"
    )
    assert api.ok("DescribeManagedInstances", Connected="false")["TotalCount"] == 1
    agent.heartbeat()
    status = api.ok("DescribeCloudAssistantStatus", **{"InstanceId.1": agent.instance_id})
    item = status["InstanceCloudAssistantStatusSet"]["InstanceCloudAssistantStatus"][0]
    assert (item["CloudAssistantStatus"], item["CloudAssistantVersion"]) == ("true", "0.0.0-fake")
    assert api.ok("DescribeManagedInstances", Connected="true")["TotalCount"] == 1


def test_kick_agent_update(api: Api) -> None:
    agent = api.agent()
    check = {"agent_version": "1.0", "os": "linux", "arch": "x86_64", "channel": "stable"}
    assert agent.post("/luban/api/v1/update/update_check", check) == {
        "update_now": False,
        "version": "",
        "upgrade_config": None,
    }
    assert api.ok("KickAgentUpdate", AgentVersion="2.0", **{"InstanceId.1": agent.instance_id})
    assert agent.poll(timeout=2) == [{"type": "update", "version": "2.0"}]
    assert agent.post("/luban/api/v1/update/update_check", check) == {
        "update_now": True,
        "version": "2.0",
        "upgrade_config": None,
    }
    assert agent.post("/luban/api/v1/update/update_check", check)["update_now"] is False  # once
    assert api.error("KickAgentUpdate") == (400, "MissingParameter")
    assert api.error("KickAgentUpdate", **{"InstanceId.1": "mi-nope"}) == (
        404,
        "InvalidInstance.NotFound",
    )


def test_invoke_times_counts_every_invocation_of_the_command(api: Api) -> None:
    """InvokeTimes is counted from the invocations (a RunCommand kept counts its own)."""
    agent = api.agent()
    invoked, idle = make_command(api), make_command(api)
    api.invoke(invoked, agent.instance_id)
    api.invoke(invoked, agent.instance_id, Timed="true", Frequency="rate(1h)")
    kept = api.ok(
        "RunCommand",
        Type="RunShellScript",
        CommandContent=ECHO,
        KeepCommand="true",
        **{"InstanceId.1": agent.instance_id},
    )["CommandId"]
    listed = api.ok("DescribeCommands")["Commands"]["Command"]
    times = {c["CommandId"]: c["InvokeTimes"] for c in listed}
    assert times == {invoked: 2, idle: 0, kept: 1}
