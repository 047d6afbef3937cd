"""The agent API (docs/agent-protocol.md): registration, signing attacks, tasks, reports."""

from __future__ import annotations

import base64
import threading
import time
import uuid

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from serverkit import Api, run_sql

from devkit.server import FakeAgent

ECHO = "ZWNobyAxMjM="


def invoke(api: Api, *agents: FakeAgent, content: str = ECHO) -> str:
    command_id = api.ok("CreateCommand", Name="c", Type="RunShellScript", CommandContent=content)[
        "CommandId"
    ]
    ids = {f"InstanceId.{i}": a.instance_id for i, a in enumerate(agents, 1)}
    return str(api.ok("InvokeCommand", CommandId=command_id, **ids)["InvokeId"])


def result(api: Api, invoke_id: str, agent: FakeAgent) -> dict:
    body = api.ok("DescribeInvocationResults", InvokeId=invoke_id, InstanceId=agent.instance_id)
    return body["Invocation"]["InvocationResults"]["InvocationResult"][0]


def register_raw(api: Api, **body: str) -> requests.Response:
    key = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    payload = {"public_key": base64.b64encode(key).decode(), "os_type": "linux", **body}
    return requests.post(api.server.url + "/luban/api/instance/register", json=payload, timeout=30)


# --- registration -------------------------------------------------------------------------


def test_register_with_wrong_code_or_unknown_activation(api: Api) -> None:
    act_id, code = api.server.create_activation(api.key_id, api.secret)
    wrong = register_raw(api, activation_id=act_id, activation_code=code + "x")
    assert (wrong.status_code, wrong.json()["code"]) == (403, "InvalidActivation")
    unknown = register_raw(api, activation_id=str(uuid.uuid4()).upper(), activation_code=code)
    assert (unknown.status_code, unknown.json()["code"]) == (403, "InvalidActivation")
    listed = api.ok("DescribeActivations", ActivationId=act_id)["ActivationList"][0]
    assert listed["RegisteredCount"] == 0


def test_activation_usage_limit(api: Api) -> None:
    act_id, code = api.server.create_activation(api.key_id, api.secret, count=2)
    FakeAgent.register(api.server.url, act_id, code)
    FakeAgent.register(api.server.url, act_id, code)
    third = register_raw(api, activation_id=act_id, activation_code=code)
    assert (third.status_code, third.json()["code"]) == (403, "ActivationLimitExceeded")
    assert api.ok("DescribeManagedInstances", ActivationId=act_id)["TotalCount"] == 2


def test_expired_activation(api: Api) -> None:
    act_id, code = api.server.create_activation(api.key_id, api.secret)
    # five hours ago, TTL 4 h
    run_sql(
        api.server,
        "UPDATE activations SET created_ms = created_ms - 18000000 WHERE activation_id = ?",
        act_id,
    )
    response = register_raw(api, activation_id=act_id, activation_code=code)
    assert (response.status_code, response.json()["code"]) == (403, "ActivationExpired")


def test_activation_ip_range(api: Api) -> None:
    body = api.ok("CreateActivation", IpAddressRange="10.0.0.0/8")
    response = register_raw(
        api, activation_id=body["ActivationId"], activation_code=body["ActivationCode"]
    )
    assert (response.status_code, response.json()["code"]) == (403, "InvalidActivation")
    body = api.ok("CreateActivation", IpAddressRange="10.0.0.0/8,127.0.0.0/8")
    ok = register_raw(
        api, activation_id=body["ActivationId"], activation_code=body["ActivationCode"]
    )
    assert ok.status_code == 200 and ok.json()["instance_id"].startswith("mi-")


@pytest.mark.parametrize(
    "body",
    [
        {"public_key": "not base64!"},
        {"public_key": base64.b64encode(b"short").decode()},
        {"os_type": "plan9"},
        {"instance_id": "../etc"},
        {"activation_code": 12},
    ],
)
def test_register_bad_input(api: Api, body: dict) -> None:
    act_id, code = api.server.create_activation(api.key_id, api.secret)
    response = register_raw(api, **{"activation_id": act_id, "activation_code": code, **body})
    assert response.status_code == 400
    assert response.json()["code"] == "InvalidParameter"


def test_register_with_given_instance_id(api: Api) -> None:
    name = "i-" + uuid.uuid4().hex[:12]
    agent = api.agent(instance_id=name)
    assert agent.instance_id == name
    assert api.ok("DescribeManagedInstances", **{"InstanceId.1": name})["TotalCount"] == 1
    other_id, other_secret = api.server.create_access_key("thief-" + uuid.uuid4().hex[:6])
    thief = Api(api.server, other_id, other_secret)
    act_id, code = api.server.create_activation(other_id, other_secret)
    stolen = register_raw(thief, activation_id=act_id, activation_code=code, instance_id=name)
    assert (stolen.status_code, stolen.json()["code"]) == (409, "InstanceIdConflict")
    agent.heartbeat()  # the original key still works


def test_register_over_a_live_instance_of_the_same_account_is_refused(api: Api) -> None:
    name = "i-" + uuid.uuid4().hex[:12]
    victim = api.agent(instance_id=name)
    act_id, code = api.server.create_activation(api.key_id, api.secret)
    taken = register_raw(api, activation_id=act_id, activation_code=code, instance_id=name)
    assert (taken.status_code, taken.json()["code"]) == (409, "InstanceIdConflict")
    victim.heartbeat()  # the victim's key still works
    api.ok("DeregisterManagedInstance", InstanceId=name)
    again = register_raw(api, activation_id=act_id, activation_code=code, instance_id=name)
    assert again.status_code == 200, again.text  # after deregistration the id may be reused


# --- signing attacks -----------------------------------------------------------------------


def test_unsigned_request_is_refused(api: Api) -> None:
    response = requests.post(api.server.url + "/luban/api/v1/task/list", json={}, timeout=30)
    assert (response.status_code, response.json()["code"]) == (401, "InvalidSignature")


def test_signature_by_another_key_is_refused(api: Api) -> None:
    agent = api.agent()
    impostor = FakeAgent(api.server.url, agent.instance_id, Ed25519PrivateKey.generate())
    response = impostor.request("POST", "/luban/api/v1/task/list", {"reason": "poll"})
    assert (response.status_code, response.json()["code"]) == (401, "InvalidSignature")


def test_tampered_body_is_refused(api: Api) -> None:
    agent = api.agent()
    invoke_id = invoke(api, agent)
    good = b'{"invoke_id": "%s", "exit_code": 0}' % invoke_id.encode()
    from devkit.server import sign_agent_request

    headers = sign_agent_request(
        agent.key, agent.instance_id, "POST", "/luban/api/v1/task/finish", "", good
    )
    forged = good.replace(b'"exit_code": 0', b'"exit_code": 1')
    response = requests.post(
        api.server.url + "/luban/api/v1/task/finish", data=forged, headers=headers, timeout=30
    )
    assert (response.status_code, response.json()["code"]) == (401, "InvalidSignature")
    assert result(api, invoke_id, agent)["InvocationStatus"] == "Pending"


def test_replayed_agent_request_is_refused(api: Api) -> None:
    agent = api.agent()
    nonce = uuid.uuid4().hex
    first = agent.request("POST", "/luban/api/heart-beat", {"agent_version": "1"}, nonce=nonce)
    assert first.status_code == 200
    again = agent.request("POST", "/luban/api/heart-beat", {"agent_version": "1"}, nonce=nonce)
    assert (again.status_code, again.json()["code"]) == (401, "ReplayedRequest")


def test_a_heartbeat_records_its_beat_and_a_replayed_one_writes_nothing(api: Api) -> None:
    """A heartbeat's beat goes into the replica's batched write with its nonce, and is written
    only when the nonce is new (server/agent_api/batch.py)."""
    agent = api.agent()
    beat = "/luban/api/heart-beat"

    def row() -> list[tuple[object, ...]]:
        sql = "SELECT agent_version, last_seen_ms FROM instances WHERE instance_id = ?"
        return run_sql(api.server, sql, agent.instance_id)

    nonce = uuid.uuid4().hex
    before = int(time.time() * 1000)
    assert agent.request("POST", beat, {"agent_version": "1.2.3"}, nonce=nonce).json() == {
        "next_interval": 60
    }
    [(version, seen)] = row()
    assert version == "1.2.3" and int(seen) >= before
    time.sleep(0.01)
    again = agent.request("POST", beat, {"agent_version": "9.9.9"}, nonce=nonce)
    assert (again.status_code, again.json()["code"]) == (401, "ReplayedRequest")
    assert row() == [(version, seen)]  # neither the version nor last-seen moved
    assert agent.request("POST", beat, {"agent_version": ""}, nonce=uuid.uuid4().hex).ok
    [(version, later)] = row()
    assert version == "1.2.3" and int(later) > int(seen)  # "" keeps the version


def test_a_used_nonce_refuses_a_terminal_report_and_undoes_its_write(api: Api) -> None:
    """On PostgreSQL a terminal report records its nonce in its own write statement, so a
    replay is found only after that write: the write must be undone with the refusal."""
    agent = api.agent()
    first, second = invoke(api, agent), invoke(api, agent)
    finish = "/luban/api/v1/task/finish"

    def report(invoke_id: str, nonce: str) -> requests.Response:
        body = {"invoke_id": invoke_id, "exit_code": 0, "output": base64.b64encode(b"x").decode()}
        return agent.request("POST", finish, body, nonce=nonce)

    used_by_report, used_by_heartbeat = uuid.uuid4().hex, uuid.uuid4().hex
    assert report(first, used_by_report).status_code == 200
    assert agent.request("POST", "/luban/api/heart-beat", {}, nonce=used_by_heartbeat).ok
    for nonce in (used_by_report, used_by_heartbeat):
        again = report(second, nonce)
        assert (again.status_code, again.json()["code"]) == (401, "ReplayedRequest")
        assert result(api, second, agent)["InvocationStatus"] == "Pending"
    assert report(second, uuid.uuid4().hex).status_code == 200
    assert result(api, second, agent)["InvocationStatus"] == "Success"
    assert result(api, first, agent)["InvocationStatus"] == "Success"


def test_stale_agent_timestamp_is_refused(api: Api) -> None:
    agent = api.agent()
    for skew in (-301, 301):
        response = agent.request(
            "POST", "/luban/api/heart-beat", {}, timestamp=int(time.time()) + skew
        )
        assert (response.status_code, response.json()["code"]) == (401, "InvalidSignature")


def test_deregistered_instance_is_refused(api: Api) -> None:
    agent = api.agent()
    invoke_id = invoke(api, agent)
    api.ok("DeregisterManagedInstance", InstanceId=agent.instance_id)
    response = agent.request("POST", "/luban/api/v1/task/list", {"reason": "poll"})
    assert (response.status_code, response.json()["code"]) == (401, "InvalidSignature")
    assert result(api, invoke_id, agent)["InvocationStatus"] == "Cancelled"


def test_signed_query_string_is_covered(api: Api) -> None:
    agent = api.agent()
    from devkit.server import sign_agent_request

    headers = sign_agent_request(
        agent.key, agent.instance_id, "GET", "/luban/api/v1/notify", "timeout=0", b""
    )
    response = requests.get(
        api.server.url + "/luban/api/v1/notify?timeout=9", headers=headers, timeout=30
    )
    assert (response.status_code, response.json()["code"]) == (401, "InvalidSignature")


# --- tasks and reports ---------------------------------------------------------------------


def test_running_chunks_then_finish(api: Api) -> None:
    agent = api.agent()
    invoke_id = invoke(api, agent)
    chunk = {"invoke_id": invoke_id, "execution_id": "0", "start_time": int(time.time() * 1000)}
    for offset, data in ((0, b"hel"), (3, b"lo "), (3, b"lo ")):  # the resend is ignored
        agent.post(
            "/luban/api/v1/task/running",
            {**chunk, "offset": offset, "output": base64.b64encode(data).decode()},
        )
    running = result(api, invoke_id, agent)
    assert (running["InvocationStatus"], running["InvokeRecordStatus"]) == ("Running", "Running")
    assert base64.b64decode(running["Output"]) == b"hello "
    assert agent.report("finish", invoke_id, b"hello world\n", 0, dropped=5)["duplicate"] is False
    done = result(api, invoke_id, agent)
    assert (done["InvocationStatus"], done["Dropped"]) == ("Success", 5)
    assert base64.b64decode(done["Output"]) == b"hello world\n"
    left = run_sql(api.server, "SELECT COUNT(*) FROM output_chunks WHERE invoke_id = ?", invoke_id)
    assert left == [(0,)]


def test_terminal_report_is_idempotent(api: Api) -> None:
    agent = api.agent()
    invoke_id = invoke(api, agent)
    assert agent.report("finish", invoke_id, b"first\n", 0) == {"ok": True, "duplicate": False}
    assert agent.report("finish", invoke_id, b"second\n", 3) == {"ok": True, "duplicate": True}
    assert agent.report("error", invoke_id, b"", None) == {"ok": True, "duplicate": True}
    item = result(api, invoke_id, agent)
    assert (item["ExitCode"], item["Repeats"], item["InvocationStatus"]) == (0, 1, "Success")
    assert base64.b64decode(item["Output"]) == b"first\n"


def test_concurrent_duplicate_reports_have_one_winner(api: Api) -> None:
    agent = api.agent()
    invoke_id = invoke(api, agent)
    answers: list[bool] = []

    def send(code: int) -> None:
        answers.append(agent.report("finish", invoke_id, str(code).encode(), code)["duplicate"])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [False] + [True] * 7
    assert result(api, invoke_id, agent)["Repeats"] == 1


@pytest.mark.parametrize(
    ("kind", "exit_code", "extra", "status", "record", "error_code"),
    [
        ("finish", 0, {}, "Success", "Finished", ""),
        ("finish", 7, {}, "Failed", "Failed", ""),
        ("timeout", None, {}, "Timeout", "Failed", ""),
        (
            "error",
            None,
            {"error_code": "UserNotExist", "error_message": "no such user"},
            "Failed",
            "Failed",
            "UserNotExist",
        ),
        ("error", None, {}, "Failed", "Failed", "ExecutionException"),
        (
            "invalid",
            None,
            {"error_code": "CommandNotApplicable"},
            "Invalid",
            "Failed",
            "CommandNotApplicable",
        ),
        ("stopped", None, {"start_time": 0}, "Stopped", "Stopped", ""),
    ],
)
def test_report_status_mapping(
    api: Api,
    kind: str,
    exit_code: int | None,
    extra: dict,
    status: str,
    record: str,
    error_code: str,
) -> None:
    agent = api.agent()
    invoke_id = invoke(api, agent)
    agent.report(kind, invoke_id, b"", exit_code, **extra)
    item = result(api, invoke_id, agent)
    assert (item["InvocationStatus"], item["InvokeRecordStatus"], item["ErrorCode"]) == (
        status,
        record,
        error_code,
    )
    if kind == "error" and extra:
        assert item["ErrorInfo"] == "no such user"
    assert agent.tasks()["run"] == []


def test_crashed_agent_sees_unfinished_task_again(api: Api) -> None:
    agent = api.agent()
    invoke_id = invoke(api, agent)
    assert [t["invoke_id"] for t in agent.tasks("startup")["run"]] == [invoke_id]
    assert [t["invoke_id"] for t in agent.tasks("startup")["run"]] == [invoke_id]
    agent.report("error", invoke_id, b"", None, error_code="AgentRestarted")
    assert agent.tasks("startup")["run"] == []
    assert result(api, invoke_id, agent)["ErrorCode"] == "AgentRestarted"


def test_report_for_foreign_or_unknown_task(api: Api) -> None:
    owner, stranger = api.agent(), api.agent()
    invoke_id = invoke(api, owner)
    response = stranger.request(
        "POST",
        "/luban/api/v1/task/finish",
        {"invoke_id": invoke_id, "execution_id": "0", "exit_code": 0},
    )
    assert (response.status_code, response.json()["code"]) == (404, "TaskNotFound")
    assert result(api, invoke_id, owner)["InvocationStatus"] == "Pending"


@pytest.mark.parametrize(
    "body",
    [
        {"invoke_id": "nope"},
        {"invoke_id": "t-abc", "exit_code": "zero"},
        {"invoke_id": "t-abc", "output": "***"},
        {"invoke_id": "t-abc", "execution_id": "x" * 40},
        ["not", "an", "object"],
    ],
)
def test_report_bad_input(api: Api, body: object) -> None:
    agent = api.agent()
    response = agent.request("POST", "/luban/api/v1/task/finish", body)
    assert (response.status_code, response.json()["code"]) == (400, "InvalidParameter")


def test_heartbeat_answers_interval(api: Api) -> None:
    agent = api.agent()
    assert agent.heartbeat() == {"next_interval": 60}


def test_long_poll_wakes_on_new_invocation(api: Api) -> None:
    agent = api.agent()
    events: list = []
    poller = threading.Thread(target=lambda: events.extend(agent.poll(timeout=20)))
    poller.start()
    time.sleep(0.3)  # let the poll park on the server
    invoke_id = invoke(api, agent)
    poller.join(timeout=15)
    assert not poller.is_alive(), "the long-poll was not woken by the invocation"
    # the kick carries the task, exactly as the task list shows it: no task list is needed
    assert [e["type"] for e in events] == ["task"]
    assert events[0]["tasks"] == agent.tasks()["run"]
    assert events[0]["tasks"][0]["invoke_id"] == invoke_id


def test_task_handed_out_by_a_kick_is_marked_delivered(api: Api) -> None:
    agent = api.agent()
    events: list = []
    poller = threading.Thread(target=lambda: events.extend(agent.poll(timeout=20)))
    poller.start()
    time.sleep(0.3)
    invoke_id = invoke(api, agent)
    poller.join(timeout=15)
    assert [t["invoke_id"] for t in events[0]["tasks"]] == [invoke_id]
    # never listed, yet delivered (batched write): a stop must ask the agent, not cancel here
    time.sleep(1.0)  # a few flush intervals (server/agent_api/batch.py)
    api.ok("StopInvocation", InvokeId=invoke_id)
    assert result(api, invoke_id, agent)["InvocationStatus"] == "Stopping"


def test_answered_long_poll_counts_as_heartbeat(api: Api) -> None:
    agent = api.agent()
    response = agent.request("GET", "/luban/api/v1/notify", query="timeout=0")
    assert response.status_code == 200
    assert response.json() == {"events": [], "heartbeat": True}


def test_long_poll_times_out_empty_and_validates(api: Api) -> None:
    agent = api.agent()
    assert agent.poll(timeout=0) == []
    response = agent.request("GET", "/luban/api/v1/notify", query="timeout=61")
    assert (response.status_code, response.json()["code"]) == (400, "InvalidParameter")


def test_unknown_agent_endpoint(api: Api) -> None:
    agent = api.agent()
    response = agent.request("POST", "/luban/api/v1/task/explode", {})
    assert response.status_code == 404
    assert response.json()["code"] == "NotFound"
