"""ClientToken across two replicas of one PostgreSQL database: concurrent retries landing on
different servers still create exactly one invocation (the token row's lock, not one process)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from serverkit import Api, run_sql

from devkit.server import ServerHandle, launch_server

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[list[ServerHandle]]:
    handles: list[ServerHandle] = []
    lock = threading.Lock()

    def start(i: int) -> None:
        handle = launch_server(tmp_path_factory.mktemp(f"token-replica{i}"), db_url=pg_url)
        with lock:
            handles.append(handle)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(handles) == 2
        yield handles
    finally:
        for handle in handles:
            handle.stop()


def test_concurrent_retries_on_two_replicas_create_exactly_one(
    replicas: list[ServerHandle],
) -> None:
    a, b = replicas
    key_id, secret = a.create_access_key(f"tok-{uuid.uuid4().hex[:8]}")
    apis = [Api(a, key_id, secret), Api(b, key_id, secret)]
    agent = apis[0].agent()
    command_id = apis[0].ok(
        "CreateCommand", Name="t", Type="RunShellScript", CommandContent="ZWNobyAxMjM="
    )["CommandId"]
    for round_ in range(3):
        token = uuid.uuid4().hex

        def invoke(i: int, token: str = token) -> str:
            body = apis[i % 2].ok(
                "InvokeCommand",
                CommandId=command_id,
                ClientToken=token,
                **{"InstanceId.1": agent.instance_id},
            )
            return str(body["InvokeId"])

        with ThreadPoolExecutor(8) as pool:
            ids = set(pool.map(invoke, range(16)))
        assert len(ids) == 1, (round_, ids)
    rows = run_sql(a, "SELECT count(*) FROM invocations WHERE command_id = ?", command_id)
    assert rows == [(3,)]
    assert len(agent.tasks()["run"]) == 3
