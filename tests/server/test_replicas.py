"""Several replicas on one PostgreSQL database: shared state, and kicks across replicas."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from serverkit import Api

from devkit.server import FakeAgent, ServerHandle

pytestmark = pytest.mark.postgres


def poll_on_other_replica(
    api: Api, other: ServerHandle
) -> tuple[FakeAgent, FakeAgent, Callable[[], list[Any] | None]]:
    """A fake agent registered through `api`'s server, the same agent long-polling `other` on a
    thread (started, given half a second), and a function that waits up to 15 s for that poll:
    its events, or None while it still waits."""
    registered = api.agent()
    on_other = FakeAgent(other.url, registered.instance_id, registered.key)
    events: list[Any] = []
    poller = threading.Thread(target=lambda: events.extend(on_other.poll(timeout=20)))
    poller.start()
    time.sleep(0.5)

    def result() -> list[Any] | None:
        poller.join(timeout=15)
        return None if poller.is_alive() else events

    return registered, on_other, result


def test_invocation_on_one_replica_wakes_agent_polling_another(
    replicas: list[ServerHandle],
) -> None:
    a, b = replicas
    api_a = Api(a, *a.create_access_key("replicas"))
    registered, agent_on_b, poll = poll_on_other_replica(api_a, b)
    invoke_id = api_a.invoke(api_a.create_command(name="x"), registered.instance_id)
    events = poll()
    assert events is not None, "NOTIFY from replica A did not wake the long-poll on replica B"
    # the task travels with the kick through NOTIFY, too
    assert [t["invoke_id"] for e in events for t in e["tasks"]] == [invoke_id]
    # the report goes to B, the operator reads it on A: one shared database
    assert [t["invoke_id"] for t in agent_on_b.tasks()["run"]] == [invoke_id]
    agent_on_b.report("finish", invoke_id, b"123\n", 0)
    item = api_a.ok("DescribeInvocationResults", InvokeId=invoke_id)["Invocation"][
        "InvocationResults"
    ]["InvocationResult"][0]
    assert (item["InvocationStatus"], item["Output"]) == ("Success", "MTIzCg==")


def test_kick_update_crosses_replicas(replicas: list[ServerHandle]) -> None:
    a, b = replicas
    api_b = Api(b, *b.create_access_key("kick"))
    registered, agent_on_a, poll = poll_on_other_replica(api_b, a)
    api_b.ok("KickAgentUpdate", AgentVersion="9.9", **{"InstanceId.1": registered.instance_id})
    assert poll() == [{"type": "update", "version": "9.9"}]
    check = {"agent_version": "1", "os": "linux", "arch": "x86_64", "channel": "stable"}
    assert agent_on_a.post("/luban/api/v1/update/update_check", check)["update_now"] is True
    assert registered.post("/luban/api/v1/update/update_check", check)["update_now"] is False


def test_nonce_replay_is_refused_across_replicas(replicas: list[ServerHandle]) -> None:
    a, b = replicas
    key_id, secret = a.create_access_key("nonce")
    registered = Api(a, key_id, secret).agent()
    on_b = FakeAgent(b.url, registered.instance_id, registered.key)
    assert registered.request("POST", "/luban/api/heart-beat", {}, nonce="n-1").status_code == 200
    again = on_b.request("POST", "/luban/api/heart-beat", {}, nonce="n-1")
    assert (again.status_code, again.json()["code"]) == (401, "ReplayedRequest")


def test_long_poll_nonce_replay_is_refused_across_replicas(replicas: list[ServerHandle]) -> None:
    """Long-poll nonces are written in batches per replica, yet a replay is refused anywhere:
    on the same replica, on another at once (both still unflushed), and on another later."""
    a, b = replicas
    key_id, secret = a.create_access_key("poll-nonce")
    registered = Api(a, key_id, secret).agent()
    on_b = FakeAgent(b.url, registered.instance_id, registered.key)
    poll = ("GET", "/luban/api/v1/notify")
    first = registered.request(*poll, query="timeout=0", nonce="p-1")
    assert first.json() == {"events": [], "heartbeat": True}
    for agent in (registered, on_b):
        again = agent.request(*poll, query="timeout=0", nonce="p-1")
        assert (again.status_code, again.json()["code"]) == (401, "ReplayedRequest")
    # the same nonce sent to both replicas at the same moment: exactly one of them takes it
    answers: list[int] = []

    def send(agent: FakeAgent) -> None:
        answers.append(agent.request(*poll, query="timeout=0", nonce="p-2").status_code)

    racers = [threading.Thread(target=send, args=(agent,)) for agent in (registered, on_b)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert sorted(answers) == [200, 401]
    # and it is in the shared table: the batched write happened
    healthy = [requests.get(h.url + "/healthz", timeout=5).json() for h in (a, b)]
    assert sum(h["batched_writes"]["rows"] for h in healthy) >= 2


def test_deregistration_on_one_replica_locks_the_key_out_on_another_at_once(
    replicas: list[ServerHandle],
) -> None:
    """Replica B has the instance's key cached (KEY_CACHE_TTL is minutes); deregistering it on A
    makes B refuse it straight away (the forget travels by NOTIFY), not when the cache expires."""
    a, b = replicas
    api_a = Api(a, *a.create_access_key("dereg"))
    registered = api_a.agent()
    on_b = FakeAgent(b.url, registered.instance_id, registered.key)
    assert on_b.request("POST", "/luban/api/heart-beat", {}).status_code == 200  # B caches it
    api_a.ok("DeregisterManagedInstance", InstanceId=registered.instance_id)
    deadline = time.monotonic() + 2.0  # a NOTIFY takes milliseconds; the old TTL was 5 s
    while (status := on_b.request("POST", "/luban/api/heart-beat", {}).status_code) == 200:
        assert time.monotonic() < deadline, "replica B still takes the deregistered key"
        time.sleep(0.05)
    assert status == 401
