"""The agent's replica set: preference by instance hash, leaving a failed replica for a jittered,
growing while, the server's list (signed answer of a real server), kept across restarts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from agent_fakeserver import register

from agent.client import AgentClient, ServerUnavailableError, retry_after
from agent.replicas import DOWN_CAP, DOWN_FIRST, STATE_FILE, ReplicaSet, preferred_order
from agent.timers import Backoff
from common.errors import UsageError
from devkit.server import free_port, launch_server

URLS = [f"http://127.0.0.1:{port}" for port in (1001, 1002, 1003)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_fleet_spreads_over_the_replicas_and_each_agent_always_prefers_the_same() -> None:
    firsts = Counter(preferred_order(f"mi-{n:05d}", URLS)[0] for n in range(3000))
    assert set(firsts) == set(URLS)
    assert all(900 < count < 1100 for count in firsts.values()), firsts
    assert preferred_order("mi-1", URLS) == preferred_order("mi-1", list(reversed(URLS)))
    # removing one replica moves only the agents that preferred it
    others = [u for u in URLS if u != URLS[0]]
    for n in range(300):
        ranking = preferred_order(f"mi-{n}", URLS)
        if ranking[0] != URLS[0]:
            assert preferred_order(f"mi-{n}", others)[0] == ranking[0]


def test_a_failed_replica_is_left_for_a_growing_while_then_tried_again() -> None:
    clock = Clock()
    replicas = ReplicaSet(URLS, "mi-x", clock=clock)
    replicas.adopt(URLS)
    first, second = preferred_order("mi-x", URLS)[:2]
    assert replicas.current() == first
    replicas.failed(first)
    assert replicas.current() == second
    replicas.failed(first)  # the same outage seen by another thread counts once
    assert replicas._down[first][0] == 1
    assert DOWN_FIRST / 2 <= replicas._down[first][1] - clock.now <= DOWN_FIRST
    assert replicas.any_up() and replicas.retry_delay(Backoff(initial=50)) <= 1.0
    clock.now += DOWN_FIRST + 0.1
    assert replicas.current() == first  # back to balance once its while is over
    replicas.failed(first)
    assert DOWN_FIRST <= replicas._down[first][1] - clock.now <= 2 * DOWN_FIRST
    for _ in range(20):
        clock.now = replicas._down[first][1] + 0.1
        replicas.failed(first)
    assert replicas._down[first][1] - clock.now <= DOWN_CAP
    replicas.succeeded(first)
    assert replicas.current() == first


def test_with_every_replica_down_the_one_back_soonest_is_used_with_the_backoff() -> None:
    clock = Clock()
    replicas = ReplicaSet(URLS[:2], "mi-y", clock=clock)
    replicas.failed(URLS[0], retry_after=120)
    replicas.failed(URLS[1])
    assert replicas.current() == URLS[1]
    assert not replicas.any_up()
    assert 30 <= replicas.retry_delay(Backoff(initial=60, cap=60)) <= 60
    assert replicas._down[URLS[0]][1] - clock.now >= 60  # Retry-After is honoured (jittered)


def test_one_server_behaves_as_before() -> None:
    replicas = ReplicaSet("http://127.0.0.1:1/", "mi-z")
    replicas.failed("http://127.0.0.1:1")
    assert replicas.current() == "http://127.0.0.1:1"
    with pytest.raises(UsageError):
        ReplicaSet([], "mi-z")


def test_the_servers_list_is_checked_and_kept_across_restarts(tmp_path: Path) -> None:
    replicas = ReplicaSet(URLS[0], "mi-a", tmp_path)
    replicas.adopt([URLS[1], "ftp://evil", URLS[2], URLS[1], 7], every=30)  # type: ignore[list-item]
    assert replicas.advertised == [URLS[1], URLS[2]]
    assert set(replicas.ranking()) == set(URLS) and replicas.ranking()[-1] == URLS[0]
    record = json.loads((tmp_path / STATE_FILE).read_text())
    assert record["replicas"] == [URLS[1], URLS[2]]
    assert (tmp_path / STATE_FILE).stat().st_mode & 0o077 == 0
    assert ReplicaSet(URLS[0], "mi-a", tmp_path).advertised == [URLS[1], URLS[2]]
    (tmp_path / STATE_FILE).write_text("{not json")
    assert ReplicaSet(URLS[0], "mi-a", tmp_path).advertised == []


def test_retry_after_header() -> None:
    assert retry_after("5") == 5.0
    assert retry_after(None) is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after("٣") is None  # a digit to str.isdigit, not ASCII


def test_a_real_server_lists_its_advertised_url_in_a_signed_answer(tmp_path: Path) -> None:
    """`--advertise-url`: the signed replica list names it; a client whose first replica is
    dead moves to the live one and learns the list from it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = launch_server(
        tmp_path / "srv", extra_args=["--advertise-url", url + "/", "--advertise-interval", "1"]
    )
    try:
        key_id, secret = server.create_access_key()
        activation = server.create_activation(key_id, secret)
        identity = register(server.url, activation, tmp_path / "state")
        dead = f"http://127.0.0.1:{free_port()}"
        replicas = ReplicaSet([dead, server.url], identity.instance_id, tmp_path / "state")
        client = AgentClient(replicas, identity)
        answer: tuple[list[str], float] = ([], 0.0)
        for _ in range(2):  # the dead one first or second, by hash: at most one failure
            try:
                answer = client.server_replicas()
                break
            except ServerUnavailableError:
                assert not replicas.any_up(besides=server.url)
        assert answer == ([url], 600.0)
        assert replicas.refresh(client.server_replicas)
        assert replicas.advertised == [url]
    finally:
        server.stop()
