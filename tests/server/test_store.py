"""The Store's group commit, on SQLite and PostgreSQL: many transaction functions share one
database transaction, yet each one's writes and errors stay its own."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from serverkit import PG_ADMIN_DSN
from sqlalchemy import text

from server.store.db import Store

INSERT = text("INSERT INTO nonces (nonce, expires) VALUES (:nonce, :expires)")
COUNT = text("SELECT count(*) AS n FROM nonces WHERE nonce LIKE :prefix")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_url"))


async def _batch_with_failures(url: str, prefix: str) -> tuple[list[Any], int, list[str]]:
    store = Store(url)
    try:
        await store.migrate()

        def job(i: int) -> Any:
            async def tx(conn: Any) -> int:
                await conn.execute(INSERT, {"nonce": f"{prefix}{i}", "expires": i})
                if i % 10 == 3:
                    raise ValueError(f"job {i} refuses after writing")
                if i % 10 == 7:  # a database error: the same nonce twice
                    await conn.execute(INSERT, {"nonce": f"{prefix}{i}", "expires": i})
                return i

            return tx

        outcomes = await asyncio.gather(
            *(store.write(job(i), durable=i % 2 == 0, key=f"i-{i % 7}") for i in range(100)),
            return_exceptions=True,
        )

        async def count(conn: Any) -> int:
            return int((await conn.execute(COUNT, {"prefix": f"{prefix}%"})).first()[0])

        async def names(conn: Any) -> list[str]:
            rows = await conn.execute(
                text("SELECT nonce FROM nonces WHERE nonce LIKE :p"), {"p": f"{prefix}%"}
            )
            return sorted(r[0] for r in rows.all())

        return list(outcomes), await store.read(count), await store.read(names)
    finally:
        await store.close()


def test_failing_functions_in_a_group_commit_lose_only_their_own_writes(db_url: str) -> None:
    outcomes, stored, names = asyncio.run(_batch_with_failures(db_url, "grp-"))
    refused = [i for i, o in enumerate(outcomes) if isinstance(o, ValueError)]
    conflicted = [i for i, o in enumerate(outcomes) if isinstance(o, Exception)]
    assert refused == [i for i in range(100) if i % 10 == 3]
    assert sorted(set(conflicted) - set(refused)) == [i for i in range(100) if i % 10 == 7]
    succeeded = [i for i in range(100) if i % 10 not in (3, 7)]
    assert [outcomes[i] for i in succeeded] == succeeded
    assert stored == len(succeeded) == 80
    assert names == sorted(f"grp-{i}" for i in succeeded)


@pytest.mark.postgres
def test_server_outlives_its_database_connections(pg_url: str, tmp_path: Path) -> None:
    """PostgreSQL restarted or the server's backends killed: the pool's dead connections are
    replaced and the next requests succeed (agent writes, operator reads and writes)."""
    import asyncpg

    from devkit.server import FakeAgent, launch_server

    server = launch_server(tmp_path / "server", db_url=pg_url)
    try:
        key_id, secret = server.create_access_key("outlive")
        agent = FakeAgent.register(server.url, *server.create_activation(key_id, secret))
        assert agent.heartbeat()["next_interval"] > 0
        database = pg_url.rsplit("/", 1)[1]

        async def kill_backends() -> str:
            conn = await asyncpg.connect(PG_ADMIN_DSN)
            try:
                return str(
                    await conn.fetchval(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = $1 AND pid <> pg_backend_pid()",
                        database,
                    )
                )
            finally:
                await conn.close()

        assert int(asyncio.run(kill_backends())) >= 1
        for _ in range(3):
            assert agent.heartbeat()["next_interval"] > 0
        listed = server.call("DescribeManagedInstances", key_id, secret)
        assert listed.status_code == 200, listed.text
        assert listed.json()["TotalCount"] == 1
        created = server.call(
            "CreateCommand",
            key_id,
            secret,
            Name="n",
            Type="RunShellScript",
            CommandContent="ZWNobw==",
        )
        assert created.status_code == 200, created.text
    finally:
        server.stop()


HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO nonces (nonce, expires) VALUES ('other-process', 1)")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def _hold_write_lock(path: Path, seconds: float) -> Any:
    """Another process (as another worker of `serve --workers N` is) holding the file's write
    lock for `seconds`; returned once it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_sqlite_write_waits_for_another_process_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    """While another process holds the write lock, a write waits on the event loop (other
    coroutines run meanwhile), then commits; both processes' rows are there."""
    path = tmp_path / "store.db"

    async def scenario() -> tuple[int, float, int]:
        store = Store(f"sqlite:///{path}")
        try:
            await store.migrate()
            holder = _hold_write_lock(path, 1.0)
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            beat = asyncio.create_task(ticker())
            started = time.monotonic()

            async def tx(conn: Any) -> str:
                await conn.execute(INSERT, {"nonce": "this-process", "expires": 1})
                return "stored"

            assert await store.write(tx) == "stored"
            waited = time.monotonic() - started
            beat.cancel()
            assert holder.wait(timeout=10) == 0

            async def count(conn: Any) -> int:
                return int((await conn.execute(COUNT, {"prefix": "%-process"})).first()[0])

            return ticks, waited, await store.read(count)
        finally:
            await store.close()

    ticks, waited, rows = asyncio.run(scenario())
    assert waited >= 0.5  # it did wait for the other process's commit…
    assert ticks >= 20  # …and the loop kept running meanwhile (a blocked loop ticks 0 times)
    assert rows == 2


def test_a_sqlite_write_locked_out_too_long_fails_clearly_and_the_next_one_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.store import db

    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 300)
    path = tmp_path / "store.db"

    async def scenario() -> None:
        store = Store(f"sqlite:///{path}")
        try:
            await store.migrate()
            holder = _hold_write_lock(path, 2.0)

            async def tx(conn: Any) -> None:
                await conn.execute(INSERT, {"nonce": "locked-out", "expires": 1})

            with pytest.raises(sqlite3.OperationalError, match="locked"):
                await store.write(tx)
            assert holder.wait(timeout=10) == 0
            await store.write(tx)  # the writer's connection is usable again

            async def count(conn: Any) -> int:
                return int((await conn.execute(COUNT, {"prefix": "locked-out"})).first()[0])

            assert await store.read(count) == 1
        finally:
            await store.close()

    asyncio.run(scenario())
