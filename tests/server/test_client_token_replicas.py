"""ClientToken across two replicas of one PostgreSQL database: concurrent retries landing on
different servers still create exactly one invocation (the token row's lock, not one process)."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from serverkit import Api, run_sql

from devkit.server import ServerHandle

pytestmark = pytest.mark.postgres


def test_concurrent_retries_on_two_replicas_create_exactly_one(
    replicas: list[ServerHandle],
) -> None:
    a, b = replicas
    key_id, secret = a.create_access_key(f"tok-{uuid.uuid4().hex[:8]}")
    apis = [Api(a, key_id, secret), Api(b, key_id, secret)]
    agent = apis[0].agent()
    command_id = apis[0].create_command()
    for round_ in range(3):
        token = uuid.uuid4().hex

        def invoke(i: int, token: str = token) -> str:
            return apis[i % 2].invoke(command_id, agent.instance_id, ClientToken=token)

        with ThreadPoolExecutor(8) as pool:
            ids = set(pool.map(invoke, range(16)))
        assert len(ids) == 1, (round_, ids)
    rows = run_sql(a, "SELECT count(*) FROM invocations WHERE command_id = ?", command_id)
    assert rows == [(3,)]
    assert len(agent.tasks()["run"]) == 3
