"""Fuzz both APIs over real HTTP (hypothesis): any operator parameters, any agent body, any
signing headers, any query get a 2xx or a 4xx with a real-looking error body, never a 5xx.
Format=XML answers are parsed (serverkit.parse_body), so they must be well-formed too."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest
import requests
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from serverkit import Api, parse_body

from devkit.server import ServerHandle, launch_server, sign_agent_request
from server.api import load_actions

NAMES = [
    "CommandId",
    "InvokeId",
    "InstanceId",
    "InstanceId.1",
    "InstanceId.2",
    "InstanceIds",
    "Name",
    "Type",
    "CommandContent",
    "ContentEncoding",
    "Timeout",
    "WorkingDir",
    "EnableParameter",
    "Parameters",
    "Timed",
    "Frequency",
    "RepeatMode",
    "Username",
    "PageSize",
    "PageNumber",
    "InvokeRecordStatus",
    "InvokeStatus",
    "IncludeOutput",
    "InstanceCount",
    "TimeToLiveInHours",
    "IpAddressRange",
    "ActivationId",
    "Connected",
    "KeepCommand",
    "AgentVersion",
    "OsType",
    "Format",
    "NextToken",
    "MaxResults",
    "IncludeHistory",
    "Description",
]
# Inputs that once gave 500s: deep nesting, huge or non-ASCII numbers, control characters.
NASTY = [
    "[" * 5000 + "]" * 5000,
    '{"a":' * 3000 + "1" + "}" * 3000,
    "[" * 5000,
    "{'a': 0x" + "f" * 5000 + "}",
    '{"a": ' + "9" * 4000 + "}",
    "²",
    "١٢",
    "１２",
    "YXNzaXN0OrI",  # base64 of "assist:" + latin-1 "²"
    "YXNzaXN0OsKy",  # base64 of "assist:²" (UTF-8)
    "XML",
    "xml",
    "\x1b[31mred\x1b[0m",
    "a\x01b",
    "\ud7ff\ufffe",
]
VALUES = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "",
            "true",
            "false",
            "0",
            "-5",
            "51",
            "1e9",
            "RunShellScript",
            "Period",
            "Once",
            "rate(5m)",
            "0 */10 * * * *",
            "PlainText",
            "ZWNobyAxMjM=",
            "{}",
            '{"a": "b"}',
            '["i-1"]',
            "[1, 2]",
            "{{x}}",
            "c-nope",
            "t-nope",
            "mi-nope",
            "10.0.0.0/8",
            "\x00",
            "é" * 10,
            *NASTY,
        ]
    ),
)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def fuzz_api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    db_url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    handle: ServerHandle = launch_server(tmp_path_factory.mktemp("fuzz"), db_url=db_url)
    try:
        key_id, secret = handle.create_access_key(f"fuzz-{uuid.uuid4().hex[:6]}")
        yield Api(handle, key_id, secret)
    finally:
        log = handle.log()
        handle.stop()
        assert "Traceback" not in log, log[-4000:]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.sampled_from(sorted(load_actions())),
    st.dictionaries(st.sampled_from(NAMES) | st.text(min_size=1, max_size=12), VALUES, max_size=6),
)
@example("DescribeCommands", {"NextToken": "YXNzaXN0OsKy"})
@example("DescribeManagedInstances", {"InstanceIds": "[" * 5000 + "]" * 5000})
@example(
    "RunCommand",
    {
        "Type": "RunShellScript",
        "CommandContent": "ZWNobyAxMjM=",
        "InstanceId.1": "i-x",
        "Parameters": "{'a': 0x" + "f" * 5000 + "}",
    },
)
@example(
    "CreateCommand",
    {"Name": "a\x01b", "Type": "RunShellScript", "CommandContent": "ZWNobyAxMjM=", "Format": "XML"},
)
def test_no_parameter_combination_causes_a_server_error(
    fuzz_api: Api, action: str, params: dict[str, str]
) -> None:
    status, body = fuzz_api.call(action, **params)
    assert status < 500, (action, params, body)
    if status >= 400:
        assert body["Code"] and body["Message"] and body["RequestId"]


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["t-nope", "0", "MTIzCg==", "startup", "linux", "\x00"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = [
    "invoke_id",
    "execution_id",
    "start_time",
    "end_time",
    "exit_code",
    "output",
    "dropped",
    "error_code",
    "error_message",
    "offset",
    "reason",
    "agent_version",
    "uptime",
    "activation_id",
    "activation_code",
    "public_key",
    "os_type",
    "instance_id",
]
PATHS = [
    "/luban/api/v1/task/list",
    "/luban/api/v1/task/running",
    "/luban/api/v1/task/finish",
    "/luban/api/v1/task/error",
    "/luban/api/v1/task/stopped",
    "/luban/api/heart-beat",
    "/luban/api/v1/update/update_check",
]


@pytest.fixture(scope="module")
def fuzz_agent(fuzz_api: Api):  # type: ignore[no-untyped-def]
    return fuzz_api.agent()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.sampled_from(PATHS), st.one_of(JSON, st.dictionaries(st.sampled_from(FIELDS), JSON)))
def test_agent_api_bodies_never_cause_a_server_error(fuzz_agent, path: str, body: object) -> None:  # type: ignore[no-untyped-def]
    response = fuzz_agent.request("POST", path, body)
    assert response.status_code < 500, (path, body, response.text)
    if response.status_code >= 400:
        assert response.json()["code"]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.dictionaries(st.sampled_from(FIELDS), JSON))
def test_register_bodies_never_cause_a_server_error(fuzz_api: Api, body: dict) -> None:
    import requests

    response = requests.post(
        fuzz_api.server.url + "/luban/api/instance/register", json=body, timeout=30
    )
    assert response.status_code in (400, 403, 409), (body, response.text)


FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
AGENT_PATHS = [*PATHS, "/luban/api/v1/notify", "/luban/api/instance/register"]
HEADER_NAMES = [
    "X-Assist-Instance-Id",
    "X-Assist-Timestamp",
    "X-Assist-Nonce",
    "X-Assist-Signature",
]
# header values as latin-1 text (what HTTP carries), no CR/LF
HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
    max_size=40,
).map(str.strip)  # HTTP drops the whitespace around a value (and requests refuses it)
RAW_BODIES = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([n.encode() for n in NASTY]),
    JSON.map(lambda v: json.dumps(v).encode()),
)


def signed_raw(agent, method: str, path: str, body: bytes, query: str = ""):  # type: ignore[no-untyped-def]
    """A correctly signed agent request with any body bytes and any query."""
    headers = sign_agent_request(agent.key, agent.instance_id, method, path, query, body)
    url = agent.url + path + (f"?{query}" if query else "")
    return requests.request(method, url, data=body or None, headers=headers, timeout=30)


def assert_agent_answer(response: requests.Response, context: object) -> None:
    assert response.status_code < 500, (context, response.text)
    if response.status_code >= 400:
        assert response.json()["code"], (context, response.text)


@FUZZ
@given(
    st.sampled_from(AGENT_PATHS),
    st.dictionaries(st.sampled_from(HEADER_NAMES), HEADER_TEXT),
    st.booleans(),
)
@example("/luban/api/heart-beat", {"X-Assist-Timestamp": "²"}, True)
@example("/luban/api/v1/notify", {"X-Assist-Timestamp": "1²"}, True)
def test_any_signing_headers_never_cause_a_server_error(
    fuzz_agent, path: str, forged: dict[str, str], start_signed: bool
) -> None:  # type: ignore[no-untyped-def]
    """Headers from a real signature overwritten by anything (or sent alone)."""
    method = "GET" if path.endswith("notify") else "POST"
    body = b"" if method == "GET" else b"{}"
    query = "timeout=0" if method == "GET" else ""  # a valid long-poll answers at once
    headers = (
        sign_agent_request(fuzz_agent.key, fuzz_agent.instance_id, method, path, query, body)
        if start_signed
        else {}
    )
    raw = {k: v.encode("latin-1") for k, v in {**headers, **forged}.items()}
    url = fuzz_agent.url + path + (f"?{query}" if query else "")
    response = requests.request(method, url, data=body or None, headers=raw, timeout=30)
    assert_agent_answer(response, (path, forged))
    if forged and not path.endswith("register"):  # a changed signed header breaks the signature
        assert response.status_code == 401, (path, forged, response.text)


@FUZZ
@given(st.sampled_from(PATHS + ["/luban/api/instance/register"]), RAW_BODIES)
@example("/luban/api/instance/register", b"[" * 30_000)
@example("/luban/api/v1/task/running", b'{"a":' * 10_000)
def test_any_signed_body_bytes_never_cause_a_server_error(
    fuzz_agent, path: str, body: bytes
) -> None:  # type: ignore[no-untyped-def]
    assert_agent_answer(signed_raw(fuzz_agent, "POST", path, body), (path, body[:80]))


@FUZZ
@given(st.text(max_size=12), st.sampled_from(["timeout", "Timeout", "x"]))
@example("²", "timeout")
def test_any_notify_query_never_causes_a_server_error(fuzz_agent, value: str, name: str) -> None:  # type: ignore[no-untyped-def]
    waits = value.isascii() and value.isdigit() and 0 < int(value) <= 60
    assume(not waits)  # a valid long-poll would wait its time out: no finding, only slowness
    params = {name: value} if name == "timeout" else {name: value, "timeout": "0"}
    query = urllib.parse.urlencode(params)
    response = signed_raw(fuzz_agent, "GET", "/luban/api/v1/notify", b"", query)
    assert_agent_answer(response, query)
    if response.status_code == 200:  # only a timeout of ASCII digits 0..60 is accepted
        assert name != "timeout" or (value.isascii() and value.isdigit() and int(value) <= 60)


@FUZZ
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_any_unsigned_operator_request_never_causes_a_server_error(
    fuzz_api: Api, query: bytes, body: bytes
) -> None:
    quoted = urllib.parse.quote_from_bytes(query, safe="=&%+")
    response = requests.post(
        f"{fuzz_api.server.url}/?{quoted}",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert response.status_code < 500, (query, body, response.text)
    assert parse_body(response)["Code"]
