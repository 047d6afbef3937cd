"""Long-polls (`/luban/api/v1/notify`): a restarted agent's dead poll must not eat its wake-ups."""

from __future__ import annotations

import base64
import http.client
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from serverkit import Api
from test_agent_api import invoke, result

from common import protocol
from devkit.server import FakeAgent, ServerHandle, sign_agent_request

NOTIFY = "/luban/api/v1/notify"


def open_poll(agent: FakeAgent, timeout: int = 30) -> http.client.HTTPConnection:
    """Send a signed long-poll and leave it unread, like an agent that died mid-poll."""
    query = f"timeout={timeout}"
    headers = sign_agent_request(agent.key, agent.instance_id, "GET", NOTIFY, query, b"")
    parts = urlsplit(agent.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout + 10)
    conn.request("GET", f"{NOTIFY}?{query}", headers=headers)
    return conn


def parked(server: ServerHandle) -> int:
    """How many long-polls the server has parked."""
    return int(requests.get(server.url + "/healthz", timeout=10).json()["waiting"])


def wait_parked(server: ServerHandle, count: int) -> None:
    """Wait until the server has exactly `count` polls parked."""
    deadline = time.monotonic() + 10
    while parked(server) != count:
        assert time.monotonic() < deadline, f"{parked(server)} polls parked, expected {count}"
        time.sleep(0.05)


def test_new_poll_gets_the_wakeup_not_the_dead_predecessor(api: Api) -> None:
    agent = api.agent()
    for _ in range(3):  # each round: the agent restarts, its old poll stays open on the server
        base = parked(api.server)
        dead = open_poll(agent)
        wait_parked(api.server, base + 1)
        events: list = []
        live = threading.Thread(target=lambda got=events: got.extend(agent.poll(timeout=20)))
        live.start()
        try:
            # the dead poll is dismissed empty-handed as soon as the new one arrives
            answer = dead.getresponse()
            assert (answer.status, answer.read()) == (200, b'{"events":[],"heartbeat":true}')
            wait_parked(api.server, base + 1)
            invoke_id = invoke(api, agent)
            live.join(timeout=15)
            assert not live.is_alive(), "the live poll was not woken by the invocation"
            assert [t["invoke_id"] for e in events for t in e["tasks"]] == [invoke_id]
        finally:
            dead.close()
            live.join()
        assert parked(api.server) == base


def test_disconnected_poll_is_unparked(api: Api) -> None:
    agent = api.agent()
    base = parked(api.server)
    gone = open_poll(agent, timeout=60)
    wait_parked(api.server, base + 1)
    gone.close()  # the agent died: its socket is closed
    wait_parked(api.server, base)
    invoke_id = invoke(api, agent)  # raised while nobody polls: kept for the next poll
    assert [t["invoke_id"] for e in agent.poll(timeout=10) for t in e["tasks"]] == [invoke_id]


def test_a_kick_never_carries_a_task_stopped_before_it_went_out(api: Api) -> None:
    # The kick waits in the buffer (nobody polls); the operator stops the invocation; the next
    # poll must not hand the task out: the server settled it without the agent (Cancelled).
    stopped, kept = api.agent(), api.agent()
    invoke_id = invoke(api, stopped, kept)
    api.ok("StopInvocation", InvokeId=invoke_id, **{"InstanceId.1": stopped.instance_id})
    events = stopped.poll(timeout=10)
    assert {"type": "task"} in events and {"type": "stop"} in events
    assert not any(e.get("tasks") for e in events)
    listed = stopped.tasks()
    assert (listed["run"], listed["stop"]) == ([], [])
    assert result(api, invoke_id, stopped)["InvocationStatus"] == "Cancelled"
    # the other instance's kick still carries it, and then a stop is one it must act on
    assert [t["invoke_id"] for e in kept.poll(timeout=10) for t in e.get("tasks", [])] == [
        invoke_id
    ]
    api.ok("StopInvocation", InvokeId=invoke_id)
    assert kept.tasks()["stop"] == [invoke_id]
    assert result(api, invoke_id, kept)["InvocationStatus"] == "Stopping"


def poll_raw(agent: FakeAgent, query: str, answers: list[requests.Response]) -> threading.Thread:
    """A long-poll in a thread; its whole response lands in `answers`."""

    def run() -> None:
        answers.append(agent.request("GET", NOTIFY, query=query, timeout=40))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def pinned_key(agent: FakeAgent) -> dict[str, Ed25519PublicKey]:
    """The control plane's key as an agent pins it: from an answer signed for its request."""
    response = agent.request("POST", "/luban/api/v1/task/list", {"reason": "startup"})
    key_b64 = response.headers[protocol.HEADER_SERVER_KEY]
    trusted = {key_b64: protocol.public_key_from_raw(base64.b64decode(key_b64))}
    sent_nonce = response.headers[protocol.HEADER_NONCE]
    protocol.check_response(
        trusted, agent.instance_id, sent_nonce, "/luban/api/v1/task/list", 200,
        response.content, response.headers,
    )  # fmt: skip
    return trusted


def test_a_kick_is_answered_once_for_every_instance_it_woke(api: Api) -> None:
    # Agents that ask for shared answers get the same bytes, signed once, naming each of them;
    # an older agent (no `shared=1`) in the same invocation gets an answer signed for its poll.
    first, second, older = api.agent(), api.agent(), api.agent()
    trusted = pinned_key(first)
    base = parked(api.server)
    answers: list[requests.Response] = []
    old_answers: list[requests.Response] = []
    threads = [poll_raw(a, "timeout=30&shared=1", answers) for a in (first, second)]
    threads.append(poll_raw(older, "timeout=30", old_answers))
    wait_parked(api.server, base + 3)
    invoke_id = invoke(api, first, second, older)
    for thread in threads:
        thread.join(timeout=20)
    assert len(answers) == 2 and len(old_answers) == 1
    one, two = answers
    assert one.status_code == two.status_code == 200
    assert one.content == two.content  # one answer for the whole audience
    assert (
        one.headers[protocol.HEADER_KICK_SIGNATURE] == two.headers[protocol.HEADER_KICK_SIGNATURE]
    )
    body = one.json()
    assert [t["invoke_id"] for e in body["events"] for t in e["tasks"]] == [invoke_id]
    assert body["heartbeat"] is True
    assert sorted(body["kick"]["audience"]) == sorted(
        protocol.audience_tag(a.instance_id) for a in (first, second, older)
    )
    assert first.instance_id not in one.text  # no agent learns the others' ids
    for agent in (first, second):
        kick_id, stamp = protocol.check_kick(
            trusted, agent.instance_id, NOTIFY, one.content, one.headers
        )
        assert kick_id == body["kick"]["id"] and abs(stamp - time.time()) < 60
    # not for an instance it does not name, nor with a byte changed, nor under another path
    stranger = api.agent()
    with pytest.raises(protocol.ResponseRefusedError) as refused:
        protocol.check_kick(trusted, stranger.instance_id, NOTIFY, one.content, one.headers)
    assert refused.value.code == protocol.REFUSED_REPLAYED
    forged = one.content.replace(
        protocol.audience_tag(first.instance_id).encode(),
        protocol.audience_tag(stranger.instance_id).encode(),
    )
    assert forged != one.content
    with pytest.raises(protocol.ResponseRefusedError) as refused:
        protocol.check_kick(trusted, stranger.instance_id, NOTIFY, forged, one.headers)
    assert refused.value.code == protocol.REFUSED_BAD_SIGNATURE
    with pytest.raises(protocol.ResponseRefusedError):
        protocol.check_kick(trusted, first.instance_id, "/luban/api/v1/x", one.content, one.headers)
    # the older agent's answer is signed for its own poll and carries the task too
    (old,) = old_answers
    assert protocol.HEADER_KICK_SIGNATURE not in old.headers
    assert "kick" not in old.json()
    assert [t["invoke_id"] for e in old.json()["events"] for t in e["tasks"]] == [invoke_id]
    assert old.headers[protocol.HEADER_INSTANCE] == older.instance_id


def test_a_poll_that_takes_a_partial_kick_is_answered_for_itself(api: Api) -> None:
    # A kick whose task this instance may no longer take (stopped before it went out) differs
    # per instance: it is never answered shared.
    stopped = api.agent()
    invoke_id = invoke(api, stopped)
    api.ok("StopInvocation", InvokeId=invoke_id, **{"InstanceId.1": stopped.instance_id})
    response = stopped.request("GET", NOTIFY, query="timeout=10&shared=1", timeout=20)
    assert response.status_code == 200
    assert protocol.HEADER_KICK_SIGNATURE not in response.headers
    assert response.headers[protocol.HEADER_INSTANCE] == stopped.instance_id
    assert not any(e.get("tasks") for e in response.json()["events"])


def test_a_parked_poll_takes_a_task_its_invocation_marked_delivered(api: Api) -> None:
    # InvokeCommand marks the task delivered for the polls parked on this replica in its own
    # transaction: a stop that follows at once finds it delivered (Stopping, told to the
    # agent), never Cancelled with the task already on its way.
    agent = api.agent()
    base = parked(api.server)
    answers: list[requests.Response] = []
    thread = poll_raw(agent, "timeout=30&shared=1", answers)
    wait_parked(api.server, base + 1)
    invoke_id = invoke(api, agent)
    api.ok("StopInvocation", InvokeId=invoke_id)
    thread.join(timeout=20)
    (answer,) = answers
    assert [t["invoke_id"] for e in answer.json()["events"] for t in e["tasks"]] == [invoke_id]
    assert result(api, invoke_id, agent)["InvocationStatus"] == "Stopping"
    assert agent.tasks()["stop"] == [invoke_id]
