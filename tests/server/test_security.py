"""Operator API security: signature v1, timestamps, nonce replay, keys, account isolation."""

from __future__ import annotations

import base64
import datetime as dt
import uuid

import requests
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkecs.request.v20140526 import CreateCommandRequest, DescribeCommandsRequest
from serverkit import Api, run_sql

from devkit.server import ServerHandle
from server.rpc import compute_signature, sign_params, utc_timestamp


def signed(api: Api, **params: str) -> dict[str, str]:
    return sign_params(params, api.key_id, api.secret, "POST")


def post(api: Api, params: dict[str, str]) -> requests.Response:
    return requests.post(api.server.url + "/", data=params, timeout=30)


def create_params() -> dict[str, str]:
    return {
        "Action": "CreateCommand",
        "Name": "x",
        "Type": "RunShellScript",
        "CommandContent": "ZWNobyAxMjM=",
    }


def count_commands(api: Api) -> int:
    return api.ok("DescribeCommands")["TotalCount"]


def test_tampered_parameter_is_refused(api: Api) -> None:
    params = signed(api, **create_params())
    params["Name"] = "evil"
    response = post(api, params)
    assert response.status_code == 400
    assert response.json()["Code"] == "SignatureDoesNotMatch"
    assert count_commands(api) == 0


def test_wrong_secret_is_refused(api: Api) -> None:
    params = sign_params(create_params(), api.key_id, "not-the-secret", "POST")
    response = post(api, params)
    assert (response.status_code, response.json()["Code"]) == (400, "SignatureDoesNotMatch")
    assert count_commands(api) == 0


def test_signature_for_get_does_not_verify_as_post(api: Api) -> None:
    params = sign_params(create_params(), api.key_id, api.secret, "GET")
    assert post(api, params).json()["Code"] == "SignatureDoesNotMatch"
    response = requests.get(api.server.url + "/", params=params, timeout=30)
    assert response.status_code == 200, response.text


def test_unknown_access_key(api: Api) -> None:
    params = sign_params(create_params(), "LTAIdoesnotexist", "x", "POST")
    response = post(api, params)
    assert (response.status_code, response.json()["Code"]) == (404, "InvalidAccessKeyId.NotFound")


def test_replayed_nonce_is_refused(api: Api) -> None:
    params = signed(api, **create_params())
    assert post(api, params).status_code == 200
    replay = post(api, params)
    assert (replay.status_code, replay.json()["Code"]) == (400, "SignatureNonceUsed")
    assert count_commands(api) == 1  # the replay created nothing


def nonce_rows(api: Api, params: dict[str, str]) -> list[tuple[object, ...]]:
    key = f"o:{api.key_id}:{params['SignatureNonce']}"
    return run_sql(api.server, "SELECT nonce FROM nonces WHERE nonce = ?", key)


def test_invoke_command_stores_its_nonce_with_the_invocation_once(api: Api) -> None:
    """InvokeCommand stores its nonce in the transaction that stores the invocation (one
    database step fewer): a replay is refused and invokes nothing, and a call refused before
    or inside that transaction uses its nonce up all the same."""
    agent = api.agent()
    command_id = api.create_command()
    target = {"InstanceId.1": agent.instance_id}
    params = signed(api, Action="InvokeCommand", CommandId=command_id, **target)
    assert post(api, params).status_code == 200
    assert len(nonce_rows(api, params)) == 1
    replay = post(api, params)
    assert (replay.status_code, replay.json()["Code"]) == (400, "SignatureNonceUsed")
    assert api.ok("DescribeInvocations")["TotalCount"] == 1  # the replay invoked nothing
    refusals = [
        # before its transaction (no such command), inside it (no such instance)
        signed(api, Action="InvokeCommand", CommandId="c-nosuchcommand", **target),
        signed(api, Action="InvokeCommand", CommandId=command_id, **{"InstanceId.1": "i-none"}),
    ]
    for refused in refusals:
        first = post(api, refused)
        assert first.status_code in (400, 404), first.text
        assert first.json()["Code"] != "SignatureNonceUsed"
        assert len(nonce_rows(api, refused)) == 1
        again = post(api, refused)
        assert (again.status_code, again.json()["Code"]) == (400, "SignatureNonceUsed")
    assert api.ok("DescribeInvocations")["TotalCount"] == 1


def test_stale_timestamp_is_refused(api: Api) -> None:
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=16)
    params = {k: v for k, v in signed(api, **create_params()).items() if k != "Signature"}
    params["Timestamp"] = utc_timestamp(old)
    params["Signature"] = compute_signature("POST", params, api.secret)
    response = post(api, params)
    assert (response.status_code, response.json()["Code"]) == (400, "InvalidTimeStamp.Expired")


def test_future_timestamp_is_refused(api: Api) -> None:
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=16)
    params = {k: v for k, v in signed(api, **create_params()).items() if k != "Signature"}
    params["Timestamp"] = utc_timestamp(future)
    params["Signature"] = compute_signature("POST", params, api.secret)
    assert post(api, params).json()["Code"] == "InvalidTimeStamp.Expired"


def test_malformed_timestamp(api: Api) -> None:
    params = {k: v for k, v in signed(api, **create_params()).items() if k != "Signature"}
    params["Timestamp"] = "yesterday"
    params["Signature"] = compute_signature("POST", params, api.secret)
    response = post(api, params)
    assert (response.status_code, response.json()["Code"]) == (400, "InvalidTimeStamp.Format")


def test_missing_signature_parameters(api: Api) -> None:
    full = signed(api, **create_params())
    for name in ("Signature", "AccessKeyId", "SignatureNonce", "Timestamp"):
        params = {k: v for k, v in full.items() if k != name}
        response = post(api, params)
        assert response.status_code == 400, name
        assert response.json()["Code"] == "MissingParameter", name


def test_unsupported_signature_method_and_version(api: Api) -> None:
    for name, value, code in (
        ("SignatureMethod", "HMAC-SHA256", "InvalidSignatureMethod"),
        ("SignatureVersion", "2.0", "InvalidSignatureVersion"),
        ("Version", "2016-01-01", "InvalidVersion"),
    ):
        params = {k: v for k, v in signed(api, **create_params()).items() if k != "Signature"}
        params[name] = value
        params["Signature"] = compute_signature("POST", params, api.secret)
        response = post(api, params)
        assert (response.status_code, response.json()["Code"]) == (400, code)


def test_unknown_action(api: Api) -> None:
    assert api.error("RebootTheWorld") == (404, "InvalidAction.NotFound")


def test_sdk_with_wrong_secret_raises_server_exception(api: Api) -> None:
    client = AcsClient(api.key_id, "wrong", "cn-hangzhou")
    request = DescribeCommandsRequest.DescribeCommandsRequest()
    request.set_endpoint(api.server.url.split("://", 1)[1])
    request.set_protocol_type("http")
    try:
        client.do_action_with_exception(request)
    except ServerException as exc:
        # The SDK compares the server's "string to sign" in the message with its own and, when
        # they match (ours is the real format), reports the real API's InvalidAccessKeySecret.
        assert exc.get_error_code() == "InvalidAccessKeySecret"
        assert exc.get_http_status() == 400
    else:
        raise AssertionError("a bad signature was accepted")


def test_accounts_are_isolated(api: Api) -> None:
    other_id, other_secret = api.server.create_access_key(f"other-{uuid.uuid4().hex[:6]}")
    other = Api(api.server, other_id, other_secret)
    command_id = api.ok(
        "CreateCommand", **{k: v for k, v in create_params().items() if k != "Action"}
    )["CommandId"]
    agent = api.agent()
    # the other account sees nothing and can touch nothing of the first
    assert other.ok("DescribeCommands")["TotalCount"] == 0
    assert other.ok("DescribeCommands", CommandId=command_id)["TotalCount"] == 0
    assert other.error("DeleteCommand", CommandId=command_id) == (404, "InvalidCmdId.NotFound")
    assert other.error("ModifyCommand", CommandId=command_id, Name="x") == (
        404,
        "InvalidCmdId.NotFound",
    )
    assert other.error(
        "InvokeCommand", CommandId=command_id, **{"InstanceId.1": agent.instance_id}
    ) == (404, "InvalidCmdId.NotFound")
    own = other.ok("CreateCommand", Name="o", Type="RunShellScript", CommandContent="ZWNobyAxMjM=")
    assert other.error(
        "InvokeCommand", CommandId=own["CommandId"], **{"InstanceId.1": agent.instance_id}
    ) == (404, "InvalidInstance.NotFound")
    assert other.ok("DescribeManagedInstances")["TotalCount"] == 0
    assert other.error("DeregisterManagedInstance", InstanceId=agent.instance_id) == (
        404,
        "InvalidInstance.NotFound",
    )
    invoke_id = api.ok(
        "InvokeCommand", CommandId=command_id, **{"InstanceId.1": agent.instance_id}
    )["InvokeId"]
    assert other.error("DescribeInvocationResults", InvokeId=invoke_id) == (
        404,
        "InvalidInvokeId.NotFound",
    )
    assert other.error("StopInvocation", InvokeId=invoke_id) == (404, "InvalidInvokeId.NotFound")
    assert other.ok("DescribeInvocations")["TotalCount"] == 0
    assert other.ok("DescribeActivations")["TotalCount"] == 0
    # and the first account's state is untouched
    assert api.ok("DescribeCommands", CommandId=command_id)["TotalCount"] == 1
    assert api.ok("DescribeInvocationResults", InvokeId=invoke_id)["Invocation"]["TotalCount"] == 1


def test_disabled_access_key_is_refused(api: Api) -> None:
    run_sql(api.server, "UPDATE access_keys SET enabled = 0 WHERE access_key_id = ?", api.key_id)
    response = post(api, signed(api, **create_params()))
    assert (response.status_code, response.json()["Code"]) == (400, "InvalidAccessKeyId.Inactive")


def test_oversized_request_is_refused(api: Api) -> None:
    params = signed(api, **create_params())
    params["Padding"] = "x" * (300 * 1024)
    response = post(api, params)
    assert response.status_code == 413
    assert response.json()["Code"] == "InvalidParameter"


def test_sdk_sends_18k_content_in_url(api: Api) -> None:
    """The SDK puts every parameter in the query string: an 18 KB script must still fit."""
    content = base64.b64encode(b"#" * (18 * 1024 * 3 // 4 - 3)).decode()
    assert len(content) <= 18 * 1024
    request = CreateCommandRequest.CreateCommandRequest()
    request.set_CommandContent(content)
    request.set_Type("RunShellScript")
    request.set_Name("big")
    command_id = api.sdk(request)["CommandId"]
    listed = api.ok("DescribeCommands", CommandId=command_id)["Commands"]["Command"][0]
    assert listed["CommandContent"] == content


def test_access_key_secrets_are_alphanumeric(sqlite_server: ServerHandle) -> None:
    """A secret starting with "-" would be read as an option by `assist configure`."""
    secrets = [sqlite_server.create_access_key("alnum")[1] for _ in range(100)]
    assert all(len(s) == 30 and s.isalnum() for s in secrets)
