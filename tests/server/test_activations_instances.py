"""DisableActivation, DeleteActivation, ModifyManagedInstance, ModifyInvocationAttribute, and
Connected meaning an agent that has actually connected."""

from __future__ import annotations

import base64
import json

import pytest
from serverkit import Api, run_sql

from devkit.server import FakeAgent


def activation(api: Api, count: int = 5) -> tuple[str, str]:
    body = api.ok("CreateActivation", InstanceCount=count)
    return body["ActivationId"], body["ActivationCode"]


def registered(api: Api, activation_id: str) -> int:
    rows = run_sql(
        api.server, "SELECT count(*) FROM instances WHERE activation_id = ?", activation_id
    )
    return int(rows[0][0])


def test_a_disabled_activation_registers_nothing(api: Api) -> None:
    act_id, code = activation(api)
    FakeAgent.register(api.server.url, act_id, code)
    body = api.ok("DisableActivation", ActivationId=act_id)
    assert body["Activation"]["Disabled"] is True
    assert body["Activation"]["RegisteredCount"] == 1
    with pytest.raises(RuntimeError, match="403|404"):
        FakeAgent.register(api.server.url, act_id, code)
    assert registered(api, act_id) == 1
    listed = api.ok("DescribeActivations", ActivationId=act_id)["ActivationList"]
    assert listed[0]["Disabled"] is True


def test_a_deleted_activation_registers_nothing(api: Api) -> None:
    act_id, code = activation(api)
    body = api.ok("DeleteActivation", ActivationId=act_id)
    assert body["Activation"]["ActivationId"] == act_id
    with pytest.raises(RuntimeError):
        FakeAgent.register(api.server.url, act_id, code)
    assert registered(api, act_id) == 0
    assert api.ok("DescribeActivations", ActivationId=act_id)["ActivationList"] == []
    assert run_sql(
        api.server, "SELECT count(*) FROM activations WHERE activation_id = ?", act_id
    ) == [(0,)]


def test_an_activation_in_use_is_not_deleted_until_its_instances_are_gone(api: Api) -> None:
    act_id, code = activation(api)
    agent = FakeAgent.register(api.server.url, act_id, code)
    status, code_ = api.error("DeleteActivation", ActivationId=act_id)
    assert (status, code_) == (403, "Activation.InUse")
    assert len(api.ok("DescribeActivations", ActivationId=act_id)["ActivationList"]) == 1
    api.ok("DeregisterManagedInstance", InstanceId=agent.instance_id)
    api.ok("DeleteActivation", ActivationId=act_id)
    assert api.ok("DescribeActivations", ActivationId=act_id)["ActivationList"] == []


def test_another_accounts_activation_is_not_found(api: Api) -> None:
    act_id, code = activation(api)
    key_id, secret = api.server.create_access_key("someone-else")
    stranger = Api(api.server, key_id, secret)
    assert stranger.error("DisableActivation", ActivationId=act_id) == (
        404,
        "InvalidActivationId.NotFound",
    )
    assert stranger.error("DeleteActivation", ActivationId=act_id)[1] == (
        "InvalidActivationId.NotFound"
    )
    FakeAgent.register(api.server.url, act_id, code)  # still works
    assert registered(api, act_id) == 1


def test_modify_managed_instance_renames_it(api: Api) -> None:
    agent = api.agent()
    body = api.ok("ModifyManagedInstance", InstanceId=agent.instance_id, InstanceName="web-1")
    assert body["Instance"] == {"InstanceId": agent.instance_id, "InstanceName": "web-1"}
    listed = api.ok("DescribeManagedInstances", **{"InstanceId.1": agent.instance_id})
    assert listed["Instances"][0]["InstanceName"] == "web-1"
    assert run_sql(
        api.server, "SELECT instance_name FROM instances WHERE instance_id = ?", agent.instance_id
    ) == [("web-1",)]
    assert api.error("ModifyManagedInstance", InstanceId="mi-nope", InstanceName="x") == (
        404,
        "InvalidInstance.NotFound",
    )
    assert api.error("ModifyManagedInstance", InstanceId=agent.instance_id)[1] == (
        "MissingParameter"
    )


def test_connected_only_once_the_agent_has_connected(api: Api) -> None:
    agent = api.agent()

    def connected() -> tuple[bool, str]:
        listed = api.ok("DescribeManagedInstances", **{"InstanceId.1": agent.instance_id})
        status = api.ok("DescribeCloudAssistantStatus", **{"InstanceId.1": agent.instance_id})
        item = status["InstanceCloudAssistantStatusSet"]["InstanceCloudAssistantStatus"][0]
        return listed["Instances"][0]["Connected"], item["CloudAssistantStatus"]

    assert connected() == (False, "false")  # registered, never connected
    agent.heartbeat()
    assert connected() == (True, "true")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def timed_invocation(api: Api, agent: FakeAgent) -> str:
    command = api.create_command(b64("echo {{who}}"), "greet", EnableParameter="true")
    return str(
        api.ok(
            "InvokeCommand",
            CommandId=command,
            Timed="true",
            Frequency="rate(5m)",
            Parameters=json.dumps({"who": "alice"}),
            **{"InstanceId.1": agent.instance_id},
        )["InvokeId"]
    )


def test_modify_invocation_attribute_changes_a_timed_invocation_in_place(api: Api) -> None:
    agent = api.agent()
    invoke_id = timed_invocation(api, agent)
    [task] = agent.tasks()["run"]
    assert base64.b64decode(task["content"]).decode() == "echo alice"
    api.ok(
        "ModifyInvocationAttribute",
        InvokeId=invoke_id,
        Parameters=json.dumps({"who": "bob"}),
        Frequency="rate(10m)",
    )
    [task2] = agent.tasks()["run"]
    assert base64.b64decode(task2["content"]).decode() == "echo bob"
    assert task2["frequency"] == "rate(10m)"
    assert task2["revision"] == task["revision"] + 1
    api.ok("ModifyInvocationAttribute", InvokeId=invoke_id, CommandContent=b64("echo hi {{who}}"))
    [task3] = agent.tasks()["run"]
    assert base64.b64decode(task3["content"]).decode() == "echo hi bob"
    rows = run_sql(
        api.server, "SELECT frequency, parameters FROM invocations WHERE invoke_id = ?", invoke_id
    )
    assert rows == [("rate(10m)", json.dumps({"who": "bob"}))]
    described = api.ok("DescribeInvocations", InvokeId=invoke_id)["Invocations"]["Invocation"]
    assert base64.b64decode(described[0]["CommandContent"]).decode() == "echo hi bob"


def test_modify_invocation_attribute_refuses_what_it_cannot_change(api: Api) -> None:
    agent = api.agent()
    invoke_id = timed_invocation(api, agent)
    assert (
        api.error(
            "ModifyInvocationAttribute", InvokeId=invoke_id, Parameters=json.dumps({"nope": "x"})
        )[1]
        == "Parameter.NotMatched"
    )
    assert api.error("ModifyInvocationAttribute", InvokeId=invoke_id)[1] == "MissingParameter"
    assert (
        api.error("ModifyInvocationAttribute", InvokeId=invoke_id, Frequency="every tuesday")[0]
        == 400
    )
    command = api.ok("CreateCommand", Name="x", Type="RunShellScript", CommandContent=b64("id"))
    once = api.ok(
        "InvokeCommand", CommandId=command["CommandId"], **{"InstanceId.1": agent.instance_id}
    )["InvokeId"]
    assert api.error("ModifyInvocationAttribute", InvokeId=once, CommandContent=b64("x"))[1] == (
        "InvalidInvocation.NotModifiable"
    )
    api.ok("StopInvocation", InvokeId=invoke_id)
    assert api.error("ModifyInvocationAttribute", InvokeId=invoke_id, Frequency="rate(1h)")[1] == (
        "InvalidInvocation.NotModifiable"
    )
    rows = run_sql(api.server, "SELECT frequency FROM invocations WHERE invoke_id = ?", invoke_id)
    assert rows == [("rate(5m)",)]
