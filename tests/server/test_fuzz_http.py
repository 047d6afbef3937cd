"""Fuzz every operator action over real HTTP: any parameter values get a 2xx or a 4xx with a
real-looking error body, never a 500 (hypothesis)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serverkit import Api

from devkit.server import ServerHandle, launch_server
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
    st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=6),
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
