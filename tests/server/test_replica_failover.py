"""Agents fail over between replicas (issue 17.2): three real `assist-server serve` replicas on
one PostgreSQL database, real agents registered with one replica's URL only. They learn the
others from the signed replica list, spread by instance hash, move to another replica within
seconds of a `kill -9` of theirs, and go back once it is up again."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from agent.replicas import preferred_order
from devkit.realagent import AgentProcess, Sdk, register_agent
from devkit.server import ServerHandle, free_port, launch_server

pytestmark = [pytest.mark.postgres, pytest.mark.xdist_group("agent-e2e")]

AGENTS = 6
FAILOVER_BOUND = 15.0  # seconds from the kill to a new task's result, at most


def start_replica(data_dir: Path, pg_url: str, port: int) -> ServerHandle:
    url = f"http://127.0.0.1:{port}"
    args = ["--advertise-url", url, "--advertise-interval", "1"]
    return launch_server(data_dir, db_url=pg_url, extra_args=args, port=port)


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str) -> Iterator[list[ServerHandle]]:
    ports = [free_port() for _ in range(3)]
    handles: list[ServerHandle] = []
    threads = [
        threading.Thread(
            target=lambda i=i: handles.append(
                start_replica(tmp_path / f"replica{i}", pg_url, ports[i])
            )
        )
        for i in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(handles) == 3
    handles.sort(key=lambda h: ports.index(int(h.url.rsplit(":", 1)[1])))
    yield handles
    for handle in handles:
        handle.stop()


def parked(handle: ServerHandle) -> int:
    """Long-polls parked on a replica (its /healthz), -1 if it does not answer."""
    try:
        return int(requests.get(handle.url + "/healthz", timeout=2).json()["waiting"])
    except (requests.RequestException, ValueError, KeyError):
        return -1


def wait_for(condition: object, timeout: float, what: str) -> float:
    """Poll `condition()` until true; the seconds it took."""
    start = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - start < timeout, what
        time.sleep(0.1)
    return time.monotonic() - start


def known_replicas(prefix: Path) -> list[str]:
    try:
        return list(json.loads((prefix / "state" / "replicas.json").read_text())["replicas"])
    except (OSError, ValueError, KeyError):
        return []


def test_agents_fail_over_to_another_replica_and_come_back(
    replicas: list[ServerHandle], tmp_path: Path
) -> None:
    first = replicas[0]
    urls = sorted(h.url for h in replicas)
    key_id, secret = first.create_access_key("failover")
    agents: dict[str, AgentProcess] = {}
    try:
        for n in range(AGENTS):
            prefix = tmp_path / f"agent{n}"
            instance_id = register_agent(first, key_id, secret, prefix)  # knows replica 0 only
            agents[instance_id] = AgentProcess(prefix)
        for agent in agents.values():
            agent.wait_connected()
        # each agent learns the three replicas from the signed list and settles on its own
        wait_for(
            lambda: all(known_replicas(a.prefix) == urls for a in agents.values()),
            30,
            "agents did not learn the replica list",
        )
        prefers = {i: preferred_order(i, urls)[0] for i in agents}
        expected = {h.url: sum(1 for u in prefers.values() if u == h.url) for h in replicas}
        wait_for(
            lambda: all(parked(h) == expected[h.url] for h in replicas),
            30,
            f"agents did not settle on their preferred replicas {expected}",
        )
        victim = max(replicas, key=lambda h: expected[h.url])
        survivor = next(h for h in replicas if h is not victim)
        moved = [i for i, url in prefers.items() if url == victim.url]
        sdk = Sdk(survivor, key_id, secret)

        victim.process.kill()  # kill -9
        killed = time.monotonic()
        victim.process.wait()
        invokes = {i: sdk.run_script("echo moved", i) for i in moved}
        took: list[float] = []
        for instance_id, invoke_id in invokes.items():
            item = sdk.wait_result(invoke_id, instance_id, ("Success", "Failed"), timeout=30)
            took.append(time.monotonic() - killed)
            assert (item["InvocationStatus"], item["Output"]) == ("Success", "bW92ZWQK")
        print(
            f"failover: {len(moved)} agents, kill -9 to task result median "
            f"{statistics.median(took):.2f} s, max {max(took):.2f} s"
        )
        assert max(took) < FAILOVER_BOUND, took
        survivors = [h for h in replicas if h is not victim]
        wait_for(
            lambda: sum(parked(h) for h in survivors) == AGENTS,
            15,
            "not every agent is parked on a surviving replica",
        )
        for agent in agents.values():
            assert agent.proc.poll() is None, agent.log()

        # the replica comes back on its URL: its agents return to it (balance), by themselves
        back = start_replica(
            tmp_path / "victim-again", first.db_url, int(victim.url.rsplit(":", 1)[1])
        )
        replicas[replicas.index(victim)] = back
        returned = wait_for(
            lambda: parked(back) == len(moved), 90, "the agents did not return to their replica"
        )
        print(f"return to balance: {returned:.1f} s after the restart")
        result = Sdk(back, key_id, secret).run_script("echo back", moved[0])
        item = sdk.wait_result(result, moved[0], ("Success", "Failed"), timeout=30)
        assert item["Output"] == "YmFjawo="
    finally:
        for agent in agents.values():
            agent.stop()
