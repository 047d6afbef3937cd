"""Tags: Tag.N on create calls, TagResources / UntagResources / ListTagResources, and tag filters
on the Describe* calls returning exactly the tagged resources (never everything)."""

from __future__ import annotations

import uuid

import pytest
from serverkit import Api, run_sql


def account_of(api: Api) -> str:
    rows = run_sql(
        api.server, "SELECT account FROM access_keys WHERE access_key_id = ?", api.key_id
    )
    return str(rows[0][0])


def create(api: Api, name: str, **tags: str) -> str:
    params = {"Name": name, "Type": "RunShellScript", "CommandContent": "ZWNobw=="}
    for n, (key, value) in enumerate(tags.items(), 1):
        params[f"Tag.{n}.Key"] = key
        params[f"Tag.{n}.Value"] = value
    return str(api.ok("CreateCommand", **params)["CommandId"])


def command_ids(api: Api, **params: str) -> set[str]:
    body = api.ok("DescribeCommands", PageSize=50, **params)
    return {c["CommandId"] for c in body["Commands"]["Command"]}


def test_tag_filter_returns_exactly_the_tagged_commands(api: Api) -> None:
    prod = create(api, "a", env="prod", team="ops")
    dev = create(api, "b", env="dev", team="ops")
    create(api, "c")
    assert command_ids(api, **{"Tag.1.Key": "env", "Tag.1.Value": "prod"}) == {prod}
    assert command_ids(api, **{"Tag.1.Key": "team"}) == {prod, dev}
    both = {"Tag.1.Key": "team", "Tag.1.Value": "ops", "Tag.2.Key": "env", "Tag.2.Value": "dev"}
    assert command_ids(api, **both) == {dev}
    assert command_ids(api, **{"Tag.1.Key": "env", "Tag.1.Value": "nope"}) == set()
    body = api.ok("DescribeCommands", CommandId=prod)
    assert body["Commands"]["Command"][0]["Tags"]["Tag"] == [
        {"TagKey": "env", "TagValue": "prod"},
        {"TagKey": "team", "TagValue": "ops"},
    ]
    rows = run_sql(
        api.server,
        "SELECT resource_id, tag_key, tag_value FROM tags WHERE account = ? ORDER BY 1, 2",
        account_of(api),
    )
    assert sorted(rows) == sorted(
        [(prod, "env", "prod"), (prod, "team", "ops"), (dev, "env", "dev"), (dev, "team", "ops")]
    )


def test_tag_filters_on_invocations_results_activations_and_instances(api: Api) -> None:
    agent = api.agent()
    other = api.agent()
    command_id = create(api, "x")
    tagged = api.ok(
        "InvokeCommand",
        CommandId=command_id,
        **{"InstanceId.1": agent.instance_id, "Tag.1.Key": "batch", "Tag.1.Value": "7"},
    )["InvokeId"]
    api.ok("InvokeCommand", CommandId=command_id, **{"InstanceId.1": agent.instance_id})
    by_tag = {"Tag.1.Key": "batch", "Tag.1.Value": "7"}
    body = api.ok("DescribeInvocations", **by_tag)
    assert [i["InvokeId"] for i in body["Invocations"]["Invocation"]] == [tagged]
    assert body["Invocations"]["Invocation"][0]["Tags"]["Tag"] == [
        {"TagKey": "batch", "TagValue": "7"}
    ]
    body = api.ok("DescribeInvocationResults", **by_tag)
    items = body["Invocation"]["InvocationResults"]["InvocationResult"]
    assert [i["InvokeId"] for i in items] == [tagged]

    act = api.ok("CreateActivation", **{"Tag.1.Key": "site", "Tag.1.Value": "hz"})
    api.ok("CreateActivation")
    body = api.ok("DescribeActivations", **{"Tag.1.Key": "site"})
    assert [a["ActivationId"] for a in body["ActivationList"]] == [act["ActivationId"]]

    api.ok(
        "TagResources",
        ResourceType="managedinstance",
        **{"ResourceId.1": other.instance_id, "Tag.1.Key": "role", "Tag.1.Value": "db"},
    )
    body = api.ok("DescribeManagedInstances", **{"Tag.1.Key": "role", "Tag.1.Value": "db"})
    assert [i["InstanceId"] for i in body["Instances"]] == [other.instance_id]
    assert body["Instances"][0]["Tags"] == [{"TagKey": "role", "TagValue": "db"}]


def test_tag_untag_list_resources(api: Api) -> None:
    a = create(api, "a")
    b = create(api, "b")
    api.ok(
        "TagResources",
        ResourceType="command",
        **{"ResourceId.1": a, "ResourceId.2": b, "Tag.1.Key": "k", "Tag.1.Value": "v"},
    )
    api.ok(
        "TagResources",
        ResourceType="command",
        **{"ResourceId.1": a, "Tag.1.Key": "k", "Tag.1.Value": "w"},
    )
    body = api.ok("ListTagResources", ResourceType="command", **{"Tag.1.Key": "k"})
    listed = {
        (t["ResourceId"], t["TagKey"], t["TagValue"], t["ResourceType"])
        for t in body["TagResources"]["TagResource"]
    }
    assert listed == {(a, "k", "w", "command"), (b, "k", "v", "command")}
    api.ok("UntagResources", ResourceType="command", **{"ResourceId.1": a, "TagKey.1": "k"})
    assert command_ids(api, **{"Tag.1.Key": "k"}) == {b}
    api.ok("UntagResources", ResourceType="command", All="true", **{"ResourceId.1": b})
    assert command_ids(api, **{"Tag.1.Key": "k"}) == set()
    assert run_sql(api.server, "SELECT count(*) FROM tags WHERE account = ?", account_of(api)) == [
        (0,)
    ]


def test_deleting_a_command_drops_its_tags(api: Api) -> None:
    a = create(api, "a", k="v")
    api.ok("DeleteCommand", CommandId=a)
    assert run_sql(api.server, "SELECT count(*) FROM tags WHERE resource_id = ?", a) == [(0,)]


@pytest.mark.parametrize(
    "params, code",
    [
        (
            {"ResourceType": "disk", "ResourceId.1": "d-1", "Tag.1.Key": "k"},
            "InvalidResourceType.NotFound",
        ),
        (
            {"ResourceType": "command", "ResourceId.1": "c-nope", "Tag.1.Key": "k"},
            "InvalidResourceId.NotFound",
        ),
        (
            {"ResourceType": "command", "ResourceId.1": "c-nope", "Tag.1.Key": "aliyun:x"},
            "InvalidTagKey.Malformed",
        ),
        (
            {
                "ResourceType": "command",
                "ResourceId.1": "c-nope",
                "Tag.1.Key": "k",
                "Tag.1.Value": "http://x",
            },
            "InvalidTagValue.Malformed",
        ),
        (
            {"ResourceType": "command", "ResourceId.1": "c-nope", "Tag.1.Value": "v"},
            "InvalidTagKey.Malformed",
        ),
    ],
)
def test_bad_tag_requests_are_refused(api: Api, params: dict[str, str], code: str) -> None:
    assert api.error("TagResources", **params)[1] == code


def test_other_accounts_resources_cannot_be_tagged(api: Api) -> None:
    key_id, secret = api.server.create_access_key(f"other-{uuid.uuid4().hex[:8]}")
    stranger = Api(api.server, key_id, secret)
    a = create(api, "a")
    status, code = stranger.error(
        "TagResources", ResourceType="command", **{"ResourceId.1": a, "Tag.1.Key": "k"}
    )
    assert (status, code) == (404, "InvalidResourceId.NotFound")
    assert run_sql(api.server, "SELECT count(*) FROM tags WHERE resource_id = ?", a) == [(0,)]


def test_more_than_twenty_tags_on_a_resource_are_refused(api: Api) -> None:
    a = create(api, "a", **{f"k{i}": "v" for i in range(20)})
    status, code = api.error(
        "TagResources", ResourceType="command", **{"ResourceId.1": a, "Tag.1.Key": "one-more"}
    )
    assert code == "InvalidTagCount"
    assert run_sql(api.server, "SELECT count(*) FROM tags WHERE resource_id = ?", a) == [(20,)]


def test_a_tag_filter_where_none_is_supported_is_refused_not_ignored(api: Api) -> None:
    status, code = api.error("DescribeCloudAssistantStatus", **{"Tag.1.Key": "env"})
    assert code == "InvalidParameter"


def test_tags_on_an_action_without_tags_change_nothing(api: Api) -> None:
    a = create(api, "a")
    status, code = api.error("DeleteCommand", CommandId=a, **{"Tag.1.Key": "env"})
    assert code == "InvalidParameter"
    assert command_ids(api) == {a}


def test_fuzzy_tag_filter_is_refused(api: Api) -> None:
    create(api, "a", env="prod")
    status, code = api.error(
        "ListTagResources", ResourceType="command", **{"TagFilter.1.TagKey": "env"}
    )
    assert code == "InvalidParameter"
