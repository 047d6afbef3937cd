"""Fixtures for the control plane: real `assist-server` subprocesses, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.testing import FakeAgent, ServerHandle, launch_server

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


class Api:
    """Signed calls as one account, through the official SDK's request classes."""

    def __init__(self, server: ServerHandle, key_id: str, secret: str) -> None:
        from aliyunsdkcore.client import AcsClient

        self.server = server
        self.key_id = key_id
        self.secret = secret
        self.client = AcsClient(key_id, secret, "cn-hangzhou", timeout=30)

    def sdk(self, request: Any) -> dict[str, Any]:
        """Send an aliyunsdkecs request object to the local server; parsed JSON back."""
        request.set_endpoint(self.server.url.split("://", 1)[1])
        request.set_protocol_type("http")
        return dict(json.loads(self.client.do_action_with_exception(request)))

    def call(self, action: str, **params: Any) -> tuple[int, dict[str, Any]]:
        """A raw signed request (our client-side signer): (HTTP status, JSON body)."""
        response = self.server.call(action, self.key_id, self.secret, **params)
        return response.status_code, response.json()

    def ok(self, action: str, **params: Any) -> dict[str, Any]:
        status, body = self.call(action, **params)
        assert status == 200, body
        return body

    def error(self, action: str, **params: Any) -> tuple[int, str]:
        status, body = self.call(action, **params)
        assert status >= 400, body
        assert set(body) >= {"RequestId", "Code", "Message"}
        return status, body["Code"]

    def agent(self, instance_id: str = "") -> FakeAgent:
        """Register a fake agent with a fresh activation of this account."""
        act_id, code = self.server.create_activation(self.key_id, self.secret, count=5)
        return FakeAgent.register(self.server.url, act_id, code, instance_id=instance_id)


def _pg_admin(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def pg_reachable() -> str:
    """'' if PostgreSQL answers on 127.0.0.1:5432, else why not."""
    try:
        _pg_admin("SELECT 1")
    except Exception as exc:  # any failure means: skip with the reason
        return f"PostgreSQL not reachable on 127.0.0.1:5432: {exc}"
    return ""


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test module, dropped afterwards."""
    reason = pg_reachable()
    if reason:
        pytest.skip(reason)
    name = f"assist_test_{uuid.uuid4().hex[:12]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """One SQLite-backed server per module; tests isolate themselves by account."""
    handle = launch_server(
        tmp_path_factory.mktemp("server"), extra_args=["--max-invoke-instances", "200"]
    )
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[ServerHandle]:
    handle = launch_server(tmp_path_factory.mktemp("pgserver"), db_url=pg_url)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest) -> Api:
    """A fresh account with its own AccessKey, on each storage backend's server."""
    name = "sqlite_server" if request.param == "sqlite" else "pg_server"
    server: ServerHandle = request.getfixturevalue(name)
    key_id, secret = server.create_access_key(f"acct-{uuid.uuid4().hex[:8]}")
    return Api(server, key_id, secret)


def db_path(server: ServerHandle) -> Path:
    return Path(server.db_url[len("sqlite:///") :])


def run_sql(server: ServerHandle, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement on a server's database (SQLite or PostgreSQL); '?' placeholders."""
    if server.db_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(db_path(server)) as db:
            return [tuple(r) for r in db.execute(sql, args).fetchall()]
    import asyncpg

    parts = sql.split("?")
    pg_sql = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
    pg_sql = pg_sql.replace("= 0", "= false").replace("= 1 ", "= true ")

    async def run() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(server.db_url)
        try:
            return [tuple(r) for r in await conn.fetch(pg_sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())
