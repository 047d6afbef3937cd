"""Signature v1 and parameter parsing, pure; property-based fuzzing with hypothesis."""

from __future__ import annotations

import time
import urllib.parse

import pytest
from aliyunsdkcore.auth.composer import rpc_signature_composer as sdk_composer
from hypothesis import given, settings
from hypothesis import strategies as st

from server import model
from server.api.commands import read_command_fields
from server.api.invocations import read_schedule
from server.rpc import (
    ApiError,
    Params,
    check_common,
    compute_signature,
    parse_form,
    sign_params,
    string_to_sign,
    verify_signature,
)

keys = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
values = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@given(st.dictionaries(keys, values, max_size=8), st.sampled_from(["GET", "POST"]))
def test_string_to_sign_matches_official_sdk(params: dict[str, str], method: str) -> None:
    sdk = getattr(sdk_composer, "__compose_string_to_sign")  # noqa: B009 - module-private
    params = {k: v for k, v in params.items() if k != "Signature"}
    assert string_to_sign(method, params) == sdk(method, params)


def test_signature_matches_official_sdk_signed_url() -> None:
    url, _ = sdk_composer.get_signed_url(
        {"Action": "DescribeCommands", "Version": "2014-05-26", "Name": "a b*~é"},
        "AKID",
        "secret",
        "JSON",
        "POST",
        {"Body": "x"},
    )
    params = dict(urllib.parse.parse_qsl(url[2:], keep_blank_values=True))
    params["Body"] = "x"
    verify_signature("POST", params, "secret")
    with pytest.raises(ApiError) as err:
        verify_signature("POST", params, "other")
    assert err.value.code == "SignatureDoesNotMatch"


def test_sign_params_round_trip() -> None:
    params = sign_params({"Action": "X", "Name": "测试 &="}, "id", "s3cret")
    check_common(params, time.time())
    verify_signature("POST", params, "s3cret")
    assert params["Signature"] == compute_signature("POST", params, "s3cret")


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_parse_form_only_raises_api_errors(query: bytes, body: bytes) -> None:
    try:
        params = parse_form(query, body)
    except ApiError as exc:
        assert exc.status == 400
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())


param_names = st.sampled_from(
    [
        "Name",
        "Type",
        "CommandContent",
        "Timeout",
        "EnableParameter",
        "ContentEncoding",
        "WorkingDir",
        "Description",
        "Timed",
        "RepeatMode",
        "Frequency",
        "PageSize",
        "PageNumber",
        "InstanceId.1",
        "InstanceId.2",
        "InstanceIds",
        "Parameters",
        "InstanceId.0",
    ]
)
param_values = st.one_of(
    values,
    st.sampled_from(
        [
            "true",
            "FALSE",
            "0",
            "-1",
            "99999999999999999999",
            "RunShellScript",
            "Period",
            "rate(5m)",
            "0 */10 * * * *",
            '["i-1"]',
            '{"a": 1}',
            "{{x}}",
            "ZWNobyAxMjM=",
            "PlainText",
            "Base64",
            "at(2026-01-01T00:00:00Z)",
        ]
    ),
)


@settings(max_examples=300)
@given(st.dictionaries(param_names, param_values, max_size=10))
def test_parameter_parser_never_crashes(raw: dict[str, str]) -> None:
    """Any combination of parameter values either parses or is answered by a 4xx ApiError."""
    p = Params(raw)
    for step in (
        lambda: read_command_fields(p, content_required=True),
        lambda: read_schedule(p),
        lambda: p.page(),
        lambda: p.list("InstanceId"),
        lambda: model.parse_parameters(p.str("Parameters")),
        lambda: p.int("Timeout", 60, 1, 86400),
        lambda: p.bool("Timed"),
    ):
        try:
            step()
        except ApiError as exc:
            assert 400 <= exc.status < 500
            assert exc.code and exc.message


def test_list_forms() -> None:
    p = Params({"InstanceId.2": "i-b", "InstanceId.1": "i-a", "InstanceIds": '["i-c", "i-a"]'})
    assert p.list("InstanceId") == ["i-a", "i-b", "i-c"]
    with pytest.raises(ApiError):
        Params({"InstanceIds": "i-a"}).list("InstanceId")
    with pytest.raises(ApiError):
        Params({f"InstanceId.{i}": f"i-{i}" for i in range(1, 102)}).list("InstanceId")


def test_check_common_refuses_stale_and_bad_timestamps() -> None:
    params = sign_params({"Action": "X"}, "id", "s")
    check_common(params, time.time())
    with pytest.raises(ApiError) as err:
        check_common(params, time.time() + 16 * 60)
    assert err.value.code == "InvalidTimeStamp.Expired"
    with pytest.raises(ApiError) as err:
        check_common({**params, "Timestamp": "2026-13-45T99:00:00Z"}, time.time())
    assert err.value.code == "InvalidTimeStamp.Format"
