"""`assist-server serve --workers 2` on one SQLite file: the workers take the write lock in turn
and tell each other of kicks and key-cache forgets over their local bus (server/bus.py).

Each request below goes on a connection of its own, so it lands on whichever worker accepts it;
/healthz names the worker (its replica id) that answered.
"""

from __future__ import annotations

import glob
import os
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from serverkit import Api

from devkit.server import FakeAgent, ServerHandle, launch_server

AGENTS = 12


@pytest.fixture
def two_workers(tmp_path: Path) -> Any:
    handle = launch_server(tmp_path, extra_args=["--workers", "2"])
    try:
        yield handle
    finally:
        handle.stop()


def fresh(agent: FakeAgent) -> FakeAgent:
    """The same agent on a new connection (a new worker, maybe)."""
    return FakeAgent(agent.url, agent.instance_id, agent.key)


def workers_waiting(server: ServerHandle) -> dict[str, int]:
    """Parked polls per worker, asking /healthz on fresh connections until both answered."""
    seen: dict[str, int] = {}
    for _ in range(200):
        answer = requests.get(server.url + "/healthz", timeout=10).json()
        seen[answer["replica"]] = answer["waiting"]
        if len(seen) == 2:
            break
    return seen


def test_a_kick_through_one_worker_wakes_polls_on_both_and_results_land_in_one_file(
    two_workers: ServerHandle,
) -> None:
    api = Api(two_workers, *two_workers.create_access_key("workers"))
    agents = [api.agent() for _ in range(AGENTS)]
    events: dict[str, list[Any]] = {}

    def poll(agent: FakeAgent) -> None:
        events[agent.instance_id] = fresh(agent).poll(timeout=30)

    pollers = [threading.Thread(target=poll, args=(a,)) for a in agents]
    for thread in pollers:
        thread.start()
    deadline = time.monotonic() + 15
    while sum((waiting := workers_waiting(two_workers)).values()) < AGENTS:
        assert time.monotonic() < deadline, f"polls parked per worker: {waiting}"
        time.sleep(0.1)
    assert len(waiting) == 2, f"both workers answer /healthz: {waiting}"
    if min(waiting.values()) == 0:
        pytest.fail(f"every poll landed on one worker ({waiting}): nothing crossed the bus")

    command_id = api.create_command(name="workers")
    started = time.monotonic()
    invoke_ids = [api.invoke(command_id, a.instance_id) for a in agents]
    for thread in pollers:
        thread.join(timeout=20)
    woken = time.monotonic() - started
    assert all(not t.is_alive() for t in pollers)
    assert woken < 10  # the kick woke them (their polls would have lasted 30 s)
    for agent, invoke_id in zip(agents, invoke_ids):
        carried = [t["invoke_id"] for e in events[agent.instance_id] for t in e.get("tasks", [])]
        assert carried == [invoke_id], f"{agent.instance_id} got {events[agent.instance_id]}"

    # each report goes to whichever worker accepts it; every one is stored, once
    for agent, invoke_id in zip(agents, invoke_ids):
        fresh(agent).report("finish", invoke_id, b"123\n", 0)
    for invoke_id in invoke_ids:
        result = api.ok("DescribeInvocationResults", InvokeId=invoke_id)["Invocation"][
            "InvocationResults"
        ]["InvocationResult"][0]
        assert (result["InvocationStatus"], result["Output"]) == ("Success", "MTIzCg==")


def pinned_to_each_worker(agent: FakeAgent, server: ServerHandle) -> dict[str, FakeAgent]:
    """The agent on one keep-alive connection per worker: connections opened at once (each
    lands on whichever worker accepts it first), each asked /healthz to learn its worker."""
    found: dict[str, FakeAgent] = {}
    for _ in range(20):
        batch = [fresh(agent) for _ in range(8)]

        def ask(copy: FakeAgent) -> None:
            replica = copy.session.get(server.url + "/healthz", timeout=10).json()["replica"]
            found.setdefault(replica, copy)

        threads = [threading.Thread(target=ask, args=(c,)) for c in batch]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if len(found) == 2:
            return found
    pytest.fail(f"connections reached only {list(found)}")


def test_a_deregistration_through_one_worker_locks_the_key_out_on_both_at_once(
    two_workers: ServerHandle,
) -> None:
    api = Api(two_workers, *two_workers.create_access_key("forget"))
    agent = api.agent()
    on = pinned_to_each_worker(agent, two_workers)
    for copy in on.values():  # each worker verifies, and caches, the instance's key
        copy.heartbeat()
    api.ok("DeregisterManagedInstance", InstanceId=agent.instance_id)
    for replica, copy in on.items():
        deadline = time.monotonic() + 2.0  # a datagram takes milliseconds; the cache, minutes
        while (status := copy.request("POST", "/luban/api/heart-beat", {}).status_code) == 200:
            assert time.monotonic() < deadline, f"worker {replica} still takes the key"
            time.sleep(0.05)
        assert status == 401
        # the same connection, so the same worker, answered
        assert copy.session.get(two_workers.url + "/healthz", timeout=10).json()["replica"] == (
            replica
        )


def listing(path: str) -> set[str]:
    """The names in a directory; none once it is gone (another test's server stopped)."""
    try:
        return set(os.listdir(path))
    except OSError:
        return set()


def test_the_bus_directory_is_private_and_gone_after_the_server_stops(tmp_path: Path) -> None:
    handle = launch_server(tmp_path, extra_args=["--workers", "2"])
    try:
        replicas = set(workers_waiting(handle))  # the two workers' replica ids
        assert len(replicas) == 2
        sockets = {f"{replica[:16]}.sock" for replica in replicas}
        ours = [
            path
            for path in glob.glob(os.path.join(tempfile.gettempdir(), "assist-server-bus-*"))
            if listing(path) == sockets
        ]
        assert len(ours) == 1, "the workers' sockets are in one bus directory"
        [bus_dir] = ours
        assert stat.S_IMODE(os.stat(bus_dir).st_mode) == 0o700
        for name in sockets:
            assert stat.S_IMODE(os.stat(os.path.join(bus_dir, name)).st_mode) == 0o600
    finally:
        handle.stop()
    assert not os.path.exists(bus_dir)
