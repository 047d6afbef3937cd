"""Signature v3 (ACS3-HMAC-SHA256): the Tea SDK at its default settings, and hand-made requests
for each way a v3 request can be wrong (docs/operator-api.md)."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from serverkit import run_sql, tea_client

from devkit.fixtures import server_fixture
from devkit.realagent import AgentProcess, register_agent
from devkit.server import ServerHandle
from server import rpc

pytestmark = pytest.mark.xdist_group("agent-e2e")


server = server_fixture("v3-server")


@pytest.fixture
def account(server: ServerHandle) -> tuple[str, str]:
    return server.create_access_key(f"v3-{uuid.uuid4().hex[:8]}")


def command_count(server: ServerHandle, account: str) -> int:
    rows = run_sql(server, "SELECT count(*) FROM commands WHERE account = ?", account)
    return int(rows[0][0])


def account_of(server: ServerHandle, key_id: str) -> str:
    rows = run_sql(server, "SELECT account FROM access_keys WHERE access_key_id = ?", key_id)
    return str(rows[0][0])


def send_v3(
    server: ServerHandle,
    action: str,
    key_id: str,
    secret: str,
    query: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
    tamper: Any = None,
) -> requests.Response:
    """A hand-made v3 request; `tamper(headers, body, query)` may spoil it after signing."""
    query = dict(query or {})
    body = urllib.parse.urlencode(form).encode() if form else b""
    host = server.url.split("://", 1)[1]
    headers = rpc.sign_v3("POST", host, action, query, key_id, secret, body)
    if tamper:
        headers, body, query = tamper(headers, body, query)
    url = server.url + "/?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    return requests.post(url, data=body, headers=headers, timeout=30)


def error_code(response: requests.Response) -> str:
    assert response.status_code >= 400, response.text
    body = response.json()
    assert set(body) >= {"RequestId", "Code", "Message"}
    return str(body["Code"])


CREATE = {"CommandContent": "ZWNobyAxMjM=", "Type": "RunShellScript", "Name": "v3"}


# --- the canonical request agrees with the SDK's own signer ---------------------------------


def test_signature_matches_the_tea_sdk_signer() -> None:
    from alibabacloud_tea_openapi.utils import Utils

    class Request:
        method = "POST"
        pathname = "/"
        query = {"RegionId": "cn-hangzhou", "Name": "a b*~/é", "Tag.1.Key": ""}
        headers = {
            "host": "127.0.0.1:1",
            "x-acs-action": "CreateCommand",
            "x-acs-version": rpc.API_VERSION,
            "x-acs-date": "2026-12-03T20:00:00Z",
            "x-acs-signature-nonce": "n1",
            "x-acs-content-sha256": hashlib.sha256(b"").hexdigest(),
            "user-agent": "  AlibabaCloud (Linux)  ",
        }

    theirs = Utils.get_authorization(
        Request, "ACS3-HMAC-SHA256", hashlib.sha256(b"").hexdigest(), "LTAIkey", "s3cret"
    )
    names = sorted(Request.headers)
    canonical = rpc.canonical_request_v3(
        "POST",
        "/",
        Request.query,
        list(Request.headers.items()),
        names,
        hashlib.sha256(b"").hexdigest(),
    )
    ours = rpc.compute_signature_v3("s3cret", canonical)
    assert theirs.endswith(f",Signature={ours}")
    assert f"SignedHeaders={';'.join(names)}," in theirs


# --- the Tea SDK, default settings, against a real agent --------------------------------------


def test_tea_sdk_default_settings_run_echo_123_on_a_real_agent(
    server: ServerHandle, account: tuple[str, str], tmp_path: Path
) -> None:
    from alibabacloud_ecs20140526 import models

    key_id, secret = account
    instance_id = register_agent(server, key_id, secret, tmp_path / "prefix")
    agent = AgentProcess(tmp_path / "prefix")
    try:
        agent.wait_connected()
        client = tea_client(server, key_id, secret)
        created = client.create_command(
            models.CreateCommandRequest(
                region_id="cn-hangzhou",
                command_content="ZWNobyAxMjM=",
                type="RunShellScript",
                name="tea-v3",
            )
        )
        command_id = created.body.command_id
        assert command_id.startswith("c-")
        invoked = client.invoke_command(
            models.InvokeCommandRequest(
                region_id="cn-hangzhou",
                command_id=command_id,
                instance_id=[instance_id],
                timed=False,
            )
        )
        invoke_id = invoked.body.invoke_id
        deadline = time.monotonic() + 30
        while True:
            answer = client.describe_invocation_results(
                models.DescribeInvocationResultsRequest(
                    region_id="cn-hangzhou", invoke_id=invoke_id, instance_id=instance_id
                )
            )
            results = answer.body.invocation.invocation_results.invocation_result
            if results and results[0].invocation_status in ("Success", "Failed"):
                break
            assert time.monotonic() < deadline, answer.body.to_map()
            time.sleep(0.2)
        assert results[0].output == "MTIzCg=="
        assert results[0].invocation_status == "Success"
        assert results[0].exit_code == 0
    finally:
        agent.stop()
    rows = run_sql(
        server,
        "SELECT status, exit_code FROM invocation_instances WHERE invoke_id = ?",
        invoke_id,
    )
    assert rows == [("Success", 0)]


def test_tea_sdk_error_codes_come_back_as_server_exceptions(
    server: ServerHandle, account: tuple[str, str]
) -> None:
    from alibabacloud_ecs20140526 import models

    key_id, _ = account
    client = tea_client(server, key_id, "not-the-secret")
    with pytest.raises(Exception) as caught:
        client.describe_commands(models.DescribeCommandsRequest(region_id="cn-hangzhou"))
    assert getattr(caught.value, "code", "") == "SignatureDoesNotMatch"


# --- hand-made v3 requests: each edge case, and nothing created by a refused one -------------


def test_v3_parameters_in_the_query(server: ServerHandle, account: tuple[str, str]) -> None:
    key_id, secret = account
    response = send_v3(server, "CreateCommand", key_id, secret, query=CREATE)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    command_id = response.json()["CommandId"]
    rows = run_sql(server, "SELECT name, content FROM commands WHERE command_id = ?", command_id)
    assert rows == [("v3", "ZWNobyAxMjM=")]


def test_v3_parameters_in_a_form_body(server: ServerHandle, account: tuple[str, str]) -> None:
    key_id, secret = account
    response = send_v3(server, "CreateCommand", key_id, secret, form=CREATE)
    assert response.status_code == 200, response.text
    command_id = response.json()["CommandId"]
    assert run_sql(server, "SELECT name FROM commands WHERE command_id = ?", command_id) == [
        ("v3",)
    ]


Tamper = Callable[[dict, bytes, dict], tuple[dict, bytes, dict]]


def body_changed(headers: dict, body: bytes, query: dict) -> tuple[dict, bytes, dict]:
    return headers, body.replace(b"v3", b"v4"), query


def body_and_hash_changed(headers: dict, body: bytes, query: dict) -> tuple[dict, bytes, dict]:
    body = body.replace(b"v3", b"v4")
    return headers | {"x-acs-content-sha256": hashlib.sha256(body).hexdigest()}, body, query


def query_changed(headers: dict, body: bytes, query: dict) -> tuple[dict, bytes, dict]:
    return headers, body, query | {"Name": "evil"}


def acs_date_unsigned(headers: dict, body: bytes, query: dict) -> tuple[dict, bytes, dict]:
    auth = headers["Authorization"].replace("x-acs-date;", "")
    return headers | {"Authorization": auth}, body, query


def without_header(header: str) -> Tamper:
    def tamper(headers: dict, body: bytes, query: dict) -> tuple[dict, bytes, dict]:
        return {k: v for k, v in headers.items() if k != header}, body, query

    return tamper


def authorization(value: str) -> Tamper:
    def tamper(headers: dict, body: bytes, query: dict) -> tuple[dict, bytes, dict]:
        return headers | {"Authorization": value}, body, query

    return tamper


@pytest.mark.parametrize(
    "where, tamper, code, named",
    [
        pytest.param(
            "form", body_changed, "SignatureDoesNotMatch", "x-acs-content-sha256",
            id="body-changed-old-hash",
        ),
        pytest.param(
            "form", body_and_hash_changed, "SignatureDoesNotMatch", "", id="body-and-hash-changed"
        ),
        pytest.param(
            "query", query_changed, "SignatureDoesNotMatch", "", id="query-changed-after-signing"
        ),
        *[
            pytest.param("query", without_header(h), "MissingParameter", h, id=f"missing-{h}")
            for h in rpc.V3_HEADERS
        ],
        pytest.param(
            "query", acs_date_unsigned, "IncompleteSignature", "x-acs-date",
            id="unsigned-acs-header",
        ),
        pytest.param(
            "query", authorization("ACS3-HMAC-SHA256 Credential=K"), "IncompleteSignature", "",
            id="authorization-without-signature",
        ),
        pytest.param(
            "query",
            authorization("ACS3-HMAC-SM3 Credential=K,SignedHeaders=host,Signature=ab"),
            "InvalidSignatureMethod",
            "",
            id="authorization-other-method",
        ),
    ],
)  # fmt: skip
def test_v3_request_spoiled_after_signing_is_refused_and_creates_nothing(
    server: ServerHandle,
    account: tuple[str, str],
    where: str,
    tamper: Tamper,
    code: str,
    named: str,
) -> None:
    """Body, hash, query, headers or Authorization changed after signing: refused with the
    real error code, the Message naming what is wrong, and no command created."""
    key_id, secret = account
    response = send_v3(server, "CreateCommand", key_id, secret, **{where: CREATE}, tamper=tamper)
    assert error_code(response) == code
    assert named in response.json()["Message"]
    assert command_count(server, account_of(server, key_id)) == 0


def test_v3_wrong_secret_is_refused(server: ServerHandle, account: tuple[str, str]) -> None:
    key_id, _ = account
    response = send_v3(server, "CreateCommand", key_id, "wrong", query=CREATE)
    assert error_code(response) == "SignatureDoesNotMatch"
    assert command_count(server, account_of(server, key_id)) == 0


def test_v3_replayed_nonce_is_refused_and_runs_nothing(
    server: ServerHandle, account: tuple[str, str]
) -> None:
    key_id, secret = account
    host = server.url.split("://", 1)[1]
    headers = rpc.sign_v3("POST", host, "CreateCommand", CREATE, key_id, secret)
    url = server.url + "/?" + urllib.parse.urlencode(CREATE)
    first = requests.post(url, headers=headers, timeout=30)
    assert first.status_code == 200, first.text
    again = requests.post(url, headers=headers, timeout=30)
    assert error_code(again) == "SignatureNonceUsed"
    assert command_count(server, account_of(server, key_id)) == 1


def test_v3_stale_date_is_refused(server: ServerHandle, account: tuple[str, str]) -> None:
    key_id, secret = account
    host = server.url.split("://", 1)[1]
    stale = rpc.utc_timestamp(dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=16))
    headers = rpc.sign_v3(
        "POST", host, "CreateCommand", CREATE, key_id, secret, extra_headers={"x-acs-date": stale}
    )
    url = server.url + "/?" + urllib.parse.urlencode(CREATE)
    response = requests.post(url, headers=headers, timeout=30)
    assert error_code(response) == "InvalidTimeStamp.Expired"
    assert command_count(server, account_of(server, key_id)) == 0


def test_v3_json_body_is_refused_not_ignored(
    server: ServerHandle, account: tuple[str, str]
) -> None:
    key_id, secret = account
    host = server.url.split("://", 1)[1]
    body = b'{"Name": "v3"}'
    headers = rpc.sign_v3(
        "POST",
        host,
        "CreateCommand",
        {},
        key_id,
        secret,
        body,
        extra_headers={"content-type": "application/json"},
    )
    response = requests.post(server.url + "/", data=body, headers=headers, timeout=30)
    assert error_code(response) == "InvalidParameter"
    assert command_count(server, account_of(server, key_id)) == 0


def test_v3_action_in_the_query_must_agree_with_the_signed_header(
    server: ServerHandle, account: tuple[str, str]
) -> None:
    key_id, secret = account
    query = {"Action": "DeleteCommand", **CREATE}
    response = send_v3(server, "CreateCommand", key_id, secret, query=query)
    assert error_code(response) == "InvalidParameter"
    assert command_count(server, account_of(server, key_id)) == 0
