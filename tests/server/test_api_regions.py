"""RegionId scoping: a resource belongs to the region it was created in (cn-hangzhou when a
request names none), a managed instance to its activation's, and is invisible, unchangeable and
untaggable from any other region."""

from __future__ import annotations

from serverkit import Api, run_sql

ECHO_123 = {"Type": "RunShellScript", "CommandContent": "ZWNobyAxMjM="}


def test_a_command_created_in_one_region_is_not_visible_in_another(api: Api) -> None:
    command_id = api.ok("CreateCommand", RegionId="cn-hangzhou", Name="hz", **ECHO_123)["CommandId"]
    assert api.ok("DescribeCommands", RegionId="us-west-1")["TotalCount"] == 0
    assert api.ok("DescribeCommands", RegionId="cn-hangzhou")["TotalCount"] == 1
    assert api.ok("DescribeCommands")["TotalCount"] == 1  # no RegionId: cn-hangzhou
    agent = api.agent()
    invoke = {"CommandId": command_id, "InstanceId.1": agent.instance_id}
    assert api.error("InvokeCommand", RegionId="us-west-1", **invoke)[1] == (
        "InvalidCmdId.NotFound"
    )
    assert api.error("DeleteCommand", RegionId="us-west-1", CommandId=command_id)[1] == (
        "InvalidCmdId.NotFound"
    )
    assert api.error("ModifyCommand", RegionId="us-west-1", CommandId=command_id, Name="x")[1] == (
        "InvalidCmdId.NotFound"
    )
    status, code = api.error(
        "TagResources",
        RegionId="us-west-1",
        ResourceType="command",
        **{"ResourceId.1": command_id, "Tag.1.Key": "k"},
    )
    assert code == "InvalidResourceId.NotFound"
    assert run_sql(
        api.server, "SELECT name, region_id FROM commands WHERE command_id = ?", command_id
    ) == [("hz", "cn-hangzhou")]


def test_invocations_and_activations_are_scoped_too(api: Api) -> None:
    agent = api.agent(region="us-west-1")
    invoke_id = api.ok(
        "RunCommand",
        RegionId="us-west-1",
        Type="RunShellScript",
        CommandContent="ZWNobyAxMjM=",
        **{"InstanceId.1": agent.instance_id},
    )["InvokeId"]
    assert api.ok("DescribeInvocations", RegionId="us-west-1")["TotalCount"] == 1
    assert api.ok("DescribeInvocations", RegionId="cn-hangzhou")["TotalCount"] == 0
    results = api.ok("DescribeInvocationResults", RegionId="cn-hangzhou")
    assert results["Invocation"]["TotalCount"] == 0
    assert api.error("StopInvocation", RegionId="cn-hangzhou", InvokeId=invoke_id)[1] == (
        "InvalidInvokeId.NotFound"
    )
    act = api.ok("CreateActivation", RegionId="us-west-1")["ActivationId"]
    listed = api.ok("DescribeActivations", RegionId="cn-hangzhou")["ActivationList"]
    assert act not in [a["ActivationId"] for a in listed]
    assert api.error("DisableActivation", RegionId="cn-hangzhou", ActivationId=act)[1] == (
        "InvalidActivationId.NotFound"
    )
    assert run_sql(api.server, "SELECT disabled FROM activations WHERE activation_id = ?", act) in (
        [(0,)],
        [(False,)],
    )


def test_a_malformed_region_is_refused(api: Api) -> None:
    assert api.error("DescribeCommands", RegionId="../etc")[1] == "InvalidRegionId.Malformed"


def test_a_managed_instance_belongs_to_its_activations_region(api: Api) -> None:
    west = api.agent(region="us-west-1")
    east = api.agent()  # cn-hangzhou
    assert run_sql(
        api.server, "SELECT region_id FROM instances WHERE instance_id = ?", west.instance_id
    ) == [("us-west-1",)]

    def listed(region: str, **params: str) -> list[str]:
        body = api.ok("DescribeManagedInstances", RegionId=region, **params)
        return sorted(i["InstanceId"] for i in body["Instances"])

    assert listed("us-west-1") == [west.instance_id]
    assert listed("cn-hangzhou") == [east.instance_id]
    assert listed("cn-hangzhou", **{"InstanceId.1": west.instance_id}) == []
    status = api.ok("DescribeCloudAssistantStatus", RegionId="cn-hangzhou")
    assert [
        s["InstanceId"]
        for s in status["InstanceCloudAssistantStatusSet"]["InstanceCloudAssistantStatus"]
    ] == [east.instance_id]

    # invoking, renaming, tagging or deregistering it from another region finds no such instance
    run = {"Type": "RunShellScript", "CommandContent": "ZWNobyAxMjM="}
    assert api.error(
        "RunCommand", RegionId="cn-hangzhou", **run, **{"InstanceId.1": west.instance_id}
    ) == (404, "InvalidInstance.NotFound")
    assert api.error(
        "ModifyManagedInstance",
        RegionId="cn-hangzhou",
        InstanceId=west.instance_id,
        InstanceName="renamed",
    ) == (404, "InvalidInstance.NotFound")
    assert api.error(
        "TagResources",
        RegionId="cn-hangzhou",
        ResourceType="managedinstance",
        **{"ResourceId.1": west.instance_id, "Tag.1.Key": "k"},
    ) == (404, "InvalidResourceId.NotFound")
    assert api.error(
        "DeregisterManagedInstance", RegionId="cn-hangzhou", InstanceId=west.instance_id
    ) == (404, "InvalidInstance.NotFound")
    assert run_sql(
        api.server,
        "SELECT instance_name, deregistered FROM instances WHERE instance_id = ?",
        west.instance_id,
    ) in ([("fake", 0)], [("fake", False)])
    assert west.tasks()["run"] == []
    assert run_sql(
        api.server, "SELECT count(*) FROM tags WHERE resource_id = ?", west.instance_id
    ) == [(0,)]

    # in its own region everything works
    api.ok("RunCommand", RegionId="us-west-1", **run, **{"InstanceId.1": west.instance_id})
    assert west.tasks()["run"][0]["content"] == "ZWNobyAxMjM="
    api.ok(
        "ModifyManagedInstance",
        RegionId="us-west-1",
        InstanceId=west.instance_id,
        InstanceName="renamed",
    )
    assert listed("us-west-1", InstanceName="renamed") == [west.instance_id]
