"""Fixtures for the control plane: real `assist-server` subprocesses, SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from serverkit import PG_HOST, Api, pg_admin, pg_reachable, replica_servers

from devkit.server import ServerHandle, launch_server


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test module, dropped afterwards."""
    reason = pg_reachable()
    if reason:
        pytest.skip(reason)
    name = f"assist_test_{uuid.uuid4().hex[:12]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@{PG_HOST}/{name}"
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[list[ServerHandle]]:
    """Two servers started at the same time on this module's PostgreSQL database (migrations
    race safely)."""
    with replica_servers(tmp_path_factory.mktemp, pg_url, "replica") as handles:
        yield handles
