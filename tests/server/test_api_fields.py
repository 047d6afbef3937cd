"""Fields of round two (WorkingDir, Launcher, ParameterDefinitions …), XML when no Format is
given, and real-API options this server does not implement refused rather than ignored."""

from __future__ import annotations

import base64

import pytest
import requests
from serverkit import Api, parse_xml, run_sql

from server import rpc
from server.api import NOT_IMPLEMENTED


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def account_of(api: Api) -> str:
    rows = run_sql(
        api.server, "SELECT account FROM access_keys WHERE access_key_id = ?", api.key_id
    )
    return str(rows[0][0])


def test_describe_commands_has_parameter_definitions_and_launcher(api: Api) -> None:
    command_id = api.create_command(b64("echo {{a}} {{b}}"), "p", EnableParameter="true")
    [command] = api.ok("DescribeCommands", CommandId=command_id)["Commands"]["Command"]
    names = [d["ParameterName"] for d in command["ParameterDefinitions"]["ParameterDefinition"]]
    assert names == ["a", "b"]
    assert command["Launcher"] == ""


def test_describe_invocations_has_working_dir_and_execution_fields(api: Api) -> None:
    agent = api.agent()
    invoke_id = api.ok(
        "RunCommand",
        Type="RunShellScript",
        CommandContent=b64("pwd"),
        WorkingDir="/srv",
        **{"InstanceId.1": agent.instance_id},
    )["InvokeId"]
    [item] = api.ok("DescribeInvocations", InvokeId=invoke_id)["Invocations"]["Invocation"]
    assert item["WorkingDir"] == "/srv"
    assert (item["Launcher"], item["TerminationMode"]) == ("", "Process")  # the defaults
    for name in ("ContainerId", "ContainerName"):
        assert item[name] == ""


def unsigned_format(api: Api, action: str, **params: str) -> dict[str, str]:
    """Signature v1 parameters with no Format at all."""
    signed = rpc.sign_params({"Action": action, **params}, api.key_id, api.secret)
    del signed["Format"]
    signed["Signature"] = rpc.compute_signature("POST", signed, api.secret)
    return signed


def test_no_format_answers_xml_as_the_real_api(api: Api) -> None:
    response = requests.post(
        api.server.url + "/", data=unsigned_format(api, "DescribeCommands"), timeout=30
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    root = parse_xml(response.content)
    assert root.tag == "DescribeCommandsResponse"
    assert root.find("TotalCount") is not None
    bad = requests.post(
        api.server.url + "/",
        data=unsigned_format(api, "DeleteCommand", CommandId="c-x"),
        timeout=30,
    )
    assert bad.status_code == 404
    assert parse_xml(bad.content).findtext("Code") == "InvalidCmdId.NotFound"


def test_our_clients_ask_for_json_explicitly() -> None:
    assert rpc.sign_params({"Action": "DescribeCommands"}, "k", "s")["Format"] == "JSON"


@pytest.mark.parametrize("option", NOT_IMPLEMENTED)
def test_an_unimplemented_option_is_refused_and_runs_nothing(api: Api, option: str) -> None:
    agent = api.agent()
    status, code = api.error(
        "RunCommand",
        Type="RunShellScript",
        CommandContent=b64("id"),
        **{"InstanceId.1": agent.instance_id, option: "x"},
    )
    assert (status, code) == (400, "InvalidParameter")
    assert run_sql(
        api.server, "SELECT count(*) FROM invocations WHERE account = ?", account_of(api)
    ) == [(0,)]


def test_an_unimplemented_filter_is_refused_not_ignored(api: Api) -> None:
    api.ok("CreateCommand", Name="a", Type="RunShellScript", CommandContent=b64("id"))
    status, body = api.call("DescribeCommands", ResourceGroupId="rg-1")
    assert (status, body["Code"]) == (400, "InvalidParameter")
    assert "ResourceGroupId" in body["Message"]
    status, body = api.call("InvokeCommand", CommandId="c-x", **{"ResourceTag.1.Key": "env"})
    assert (status, body["Code"]) == (400, "InvalidParameter")
