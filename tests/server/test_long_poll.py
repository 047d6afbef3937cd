"""Long-polls (`/luban/api/v1/notify`): a restarted agent's dead poll must not eat its wake-ups."""

from __future__ import annotations

import http.client
import threading
import time
from urllib.parse import urlsplit

import requests
from serverkit import Api
from test_agent_api import invoke, result

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
