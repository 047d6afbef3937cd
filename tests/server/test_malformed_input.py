"""Malformed input answers 4xx with the documented code, never 500 (deep JSON, huge and
non-ASCII numbers), and Format=XML stays well-formed whatever the text holds (ANSI escapes,
control characters). The property tests over both APIs are in test_fuzz_http.py."""

from __future__ import annotations

import base64
import socket
import uuid
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import requests
from serverkit import Api, parse_xml

from devkit.server import FakeAgent, sign_agent_request
from server.rpc import to_xml

DEEP_LIST = "[" * 30_000 + "]" * 30_000  # 60 KB, far deeper than the JSON parser's recursion
DEEP_OBJECT = '{"a":' * 10_000 + "1" + "}" * 10_000
HEX_LITERAL = "{'a': 0x" + "f" * 5000 + "}"  # a valid Python literal whose int str() refuses


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def command(api: Api, name: str = "c", content: str = "echo {{a}}") -> str:
    return api.ok(
        "CreateCommand",
        Name=name,
        Type="RunShellScript",
        CommandContent=b64(content),
        EnableParameter="true",
    )["CommandId"]


@pytest.fixture
def agent(api: Api) -> FakeAgent:
    return api.agent()


@pytest.mark.parametrize(
    ("parameters", "code"),
    [
        (DEEP_LIST, "InvalidParameter.Parameters"),
        (DEEP_OBJECT, "InvalidParameter.Parameters"),
        ("[" * 20_000, "InvalidParameter.Parameters"),  # unterminated, as a Python literal too
        (HEX_LITERAL, "InvalidParameter.Parameters"),
        ('{"a": ' + "9" * 4000 + "}", "InvalidParameter.Parameters"),
    ],
    ids=["deep-list", "deep-object", "deep-unterminated", "hex-5000-digits", "int-4000-digits"],
)
def test_bad_parameters_are_invalid_parameter_not_a_server_error(
    api: Api, agent: FakeAgent, parameters: str, code: str
) -> None:
    command_id = command(api)
    status, body = api.call(
        "InvokeCommand",
        CommandId=command_id,
        Parameters=parameters,
        **{"InstanceId.1": agent.instance_id},
    )
    assert (status, body["Code"]) == (400, code)
    assert api.ok("DescribeInvocations", CommandId=command_id)["TotalCount"] == 0  # none stored


@pytest.mark.parametrize("action", ["DescribeManagedInstances", "InvokeCommand"])
def test_deeply_nested_instance_ids_are_invalid_parameter(api: Api, action: str) -> None:
    status, body = api.call(action, CommandId=command(api), InstanceIds=DEEP_LIST)
    assert (status, body["Code"]) == (400, "InvalidParameter")


@pytest.mark.parametrize("number", ["²", "١٢", "１２", "12a", "9" * 13])
def test_next_token_with_a_non_ascii_digit_is_refused(api: Api, number: str) -> None:
    token = base64.urlsafe_b64encode(f"assist:{number}".encode()).decode().rstrip("=")
    status, body = api.call("DescribeCommands", NextToken=token)
    assert (status, body["Code"]) == (400, "InvalidParameter.NextToken")


@pytest.mark.parametrize("body", [DEEP_LIST, DEEP_OBJECT, "[" * 50_000])
def test_deep_json_to_register_unauthenticated_is_400(api: Api, body: str) -> None:
    response = requests.post(
        api.server.url + "/luban/api/instance/register",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400 and response.json()["code"] == "InvalidParameter"


@pytest.mark.parametrize("body", [DEEP_LIST, DEEP_OBJECT])
def test_deep_json_from_a_signed_agent_is_400(agent: FakeAgent, body: str) -> None:
    response = signed_raw(agent, "POST", "/luban/api/v1/task/running", body.encode())
    assert response.status_code == 400 and response.json()["code"] == "InvalidParameter"


@pytest.mark.parametrize("stamp", ["²", "１７００００００００", "1²", "١٢٣"])
def test_non_ascii_timestamp_header_is_401(agent: FakeAgent, stamp: str) -> None:
    headers = sign_agent_request(
        agent.key, agent.instance_id, "POST", "/luban/api/heart-beat", "", b"{}"
    )
    headers.pop("X-Assist-Timestamp")
    # latin-1 where it can be ("²" is byte B2, which the server decodes back to "²")
    raw_headers = {k: v.encode("latin-1") for k, v in headers.items()}
    raw_headers["X-Assist-Timestamp"] = encode_header(stamp)
    response = requests.post(
        agent.url + "/luban/api/heart-beat", data=b"{}", headers=raw_headers, timeout=30
    )
    assert response.status_code == 401 and response.json()["code"] == "InvalidSignature"


@pytest.mark.parametrize("timeout", ["%C2%B2", "%D9%A1", "-1", "1.5", "99999999999999999999"])
def test_notify_timeout_that_is_not_ascii_digits_is_400(agent: FakeAgent, timeout: str) -> None:
    response = signed_raw(agent, "GET", "/luban/api/v1/notify", b"", query=f"timeout={timeout}")
    assert response.status_code == 400 and response.json()["code"] == "InvalidParameter"


def encode_header(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def signed_raw(
    agent: FakeAgent, method: str, path: str, body: bytes, query: str = ""
) -> requests.Response:
    """A correctly signed request with any body bytes and query."""
    headers = sign_agent_request(agent.key, agent.instance_id, method, path, query, body)
    url = agent.url + path + (f"?{query}" if query else "")
    return requests.request(method, url, data=body or None, headers=headers, timeout=30)


# --- Format=XML -------------------------------------------------------------------------------


def test_to_xml_replaces_what_xml_1_0_forbids() -> None:
    body = {"Output": "\x1b[31mred\x1b[0m\x00", "Name": "a\x01b", "Keep": "tab\t\nnewline é 𝄞"}
    root = ET.fromstring(to_xml("R", body))
    assert root.findtext("Output") == "\ufffd[31mred\ufffd[0m\ufffd"
    assert root.findtext("Name") == "a\ufffdb"
    assert root.findtext("Keep") == "tab\t\nnewline é 𝄞"


def test_xml_responses_with_ansi_output_and_control_characters_are_well_formed(
    api: Api, agent: FakeAgent
) -> None:
    name = f"colour\x01{uuid.uuid4().hex[:6]}"
    command_id = command(api, name, "printf '\\033[31mred\\033[0m {{a}}\\n'")
    invoke_id = api.ok(
        "InvokeCommand",
        CommandId=command_id,
        Parameters='{"a":"x"}',
        **{"InstanceId.1": agent.instance_id},
    )["InvokeId"]
    agent.tasks("kick")
    agent.report("finish", invoke_id, b"\x1b[31mred\x1b[0m x\n\x07")
    results = xml(api, "DescribeInvocationResults", InvokeId=invoke_id, ContentEncoding="PlainText")
    assert results.findtext(".//InvocationResult/Output") == "\ufffd[31mred\ufffd[0m x\n\ufffd"
    commands = xml(api, "DescribeCommands", CommandId=command_id, ContentEncoding="PlainText")
    assert commands.findtext(".//Command/Name") == name.replace("\x01", "\ufffd")
    invocations = xml(
        api,
        "DescribeInvocations",
        InvokeId=invoke_id,
        ContentEncoding="PlainText",
        IncludeOutput="true",
    )
    assert "red" in (invocations.findtext(".//InvokeInstance/Output") or "")
    # the JSON answer keeps every byte
    plain = api.ok("DescribeInvocationResults", InvokeId=invoke_id, ContentEncoding="PlainText")
    output = plain["Invocation"]["InvocationResults"]["InvocationResult"][0]["Output"]
    assert output == "\x1b[31mred\x1b[0m x\n\x07"


def xml(api: Api, action: str, **params: Any) -> ET.Element:
    response = api.server.call(action, api.key_id, api.secret, Format="XML", **params)
    assert response.status_code == 200, response.text
    return parse_xml(response.content)


@pytest.mark.parametrize("path", ["/luban/api/heart-beat", "/luban/api/v1/notify"])
def test_a_query_that_is_not_utf8_is_refused_not_a_server_error(
    agent: FakeAgent, path: str
) -> None:
    """The agent API reads the path and query from the ASGI scope (server/agent_api/respond.py
    `target`): a raw byte that is not UTF-8 is refused (400 by the HTTP parser, or 401 when it
    gets through), never a server error."""
    headers = sign_agent_request(agent.key, agent.instance_id, "POST", path, "a=b", b"{}")
    host, port = agent.url.split("://", 1)[1].rsplit(":", 1)
    method = "GET" if path.endswith("notify") else "POST"
    lines = [f"{method} {path}?a=\xff HTTP/1.1".encode("latin-1"), b"Host: bench"]
    lines += [f"{k}: {v}".encode() for k, v in headers.items()]
    lines += [b"Content-Length: 2", b"Connection: close"]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n{}")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 401), answer[:300]
