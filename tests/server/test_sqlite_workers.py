"""`assist-server serve --workers 2` on one SQLite file: the workers take the write lock in turn
and tell each other of kicks and key-cache forgets over their local bus (server/bus.py).

A new connection lands on whichever worker accepts it first (under load, one worker may take
them all for a while), so the tests pin keep-alive connections to each worker: /healthz on a
connection names the worker (its replica id) behind it.
"""

from __future__ import annotations

import glob
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
import requests
from serverkit import Api

from devkit.server import FakeAgent, ServerHandle, launch_server

AGENTS = 12
P = TypeVar("P")


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


def pinned(server: ServerHandle, make: Callable[[], P]) -> dict[str, P]:
    """One object from `make` (with a requests `session`) per worker, its keep-alive connection
    pinned to that worker: connections opened at once (each lands on whichever worker accepts
    it first, and a busy worker may take none for a while), each asked /healthz to learn its
    worker."""
    found: dict[str, P] = {}
    for _ in range(50):
        batch = [make() for _ in range(8)]

        def ask(one: P) -> None:
            answer = one.session.get(server.url + "/healthz", timeout=10)  # type: ignore[attr-defined]
            found.setdefault(answer.json()["replica"], one)

        threads = [threading.Thread(target=ask, args=(one,)) for one in batch]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if len(found) == 2:
            return found
    pytest.fail(f"connections reached only {list(found)}")


def pinned_to_each_worker(agent: FakeAgent, server: ServerHandle) -> dict[str, FakeAgent]:
    """The agent on one keep-alive connection per worker."""
    return pinned(server, lambda: fresh(agent))


def test_a_kick_through_one_worker_wakes_polls_on_both_and_results_land_in_one_file(
    two_workers: ServerHandle,
) -> None:
    api = Api(two_workers, *two_workers.create_access_key("workers"))
    agents = [api.agent() for _ in range(AGENTS)]
    events: dict[str, list[Any]] = {}

    def poll(agent: FakeAgent) -> None:
        events[agent.instance_id] = agent.poll(timeout=30)

    # each agent polls on a connection pinned to one worker, half of them on each
    pins = [pinned_to_each_worker(a, two_workers) for a in agents]
    replicas = sorted(pins[0])
    pollers = [
        threading.Thread(target=poll, args=(pin[replicas[n % 2]],)) for n, pin in enumerate(pins)
    ]
    for thread in pollers:
        thread.start()
    # each worker's /healthz on a pinned connection no poll uses (agent 0 polls on the first
    # worker, agent 1 on the second)
    idle = {replicas[1]: pins[0][replicas[1]], replicas[0]: pins[1][replicas[0]]}

    def waiting() -> dict[str, int]:
        url = two_workers.url + "/healthz"
        return {r: int(a.session.get(url, timeout=10).json()["waiting"]) for r, a in idle.items()}

    deadline = time.monotonic() + 15
    while (parked := waiting()) != dict.fromkeys(replicas, AGENTS // 2):
        assert time.monotonic() < deadline, f"polls parked per worker: {parked}"
        time.sleep(0.1)

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
        replicas = set(pinned(handle, lambda: SimpleNamespace(session=requests.Session())))
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


def children_of(pid: int) -> set[int]:
    """Processes whose parent is `pid` (from /proc)."""
    found = set()
    for stat_file in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat_file).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat_file.split("/")[2]))
    return found


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_stop_and_remove_the_bus_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    handle = launch_server(tmp_path, extra_args=["--workers", "2"])
    try:
        replicas = set(pinned(handle, lambda: SimpleNamespace(session=requests.Session())))
        sockets = {f"{replica[:16]}.sock" for replica in replicas}
        [bus_dir] = [
            path
            for path in glob.glob(os.path.join(tempfile.gettempdir(), "assist-server-bus-*"))
            if listing(path) == sockets
        ]
        # the two workers and multiprocessing's resource tracker
        workers = {pid for pid in children_of(handle.process.pid) if running(pid)}
        assert len(workers) >= 2
        handle.process.kill()  # SIGKILL: the supervisor can neither stop them nor clean up
        handle.process.wait()
        deadline = time.monotonic() + 15
        while any(map(running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(running, workers)), "orphaned workers kept serving"
        assert not os.path.exists(bus_dir)
        with pytest.raises(requests.ConnectionError):
            requests.get(handle.url + "/healthz", timeout=5)
        assert "supervisor" in handle.log() and "is gone: stopping" in handle.log()
    finally:
        handle.stop()
