"""Heartbeats in the replica's batched write (server/agent_api/batch.py `claim_beat`): on each
backend, the beats, nonces and last-seen times that queue together go in one flush; a beat is
written only with a new nonce, an instance's newest beat wins, and "" keeps its version."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from server.agent_api.batch import ReplicaWrites
from server.store.db import Store
from server.store.schema import instances


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'beats.db'}"
    return str(request.getfixturevalue("pg_url"))


async def rows(store: Store, ids: list[str]) -> dict[str, tuple[Any, ...]]:
    async def read(conn: Any) -> dict[str, tuple[Any, ...]]:
        query = select(
            instances.c.instance_id,
            instances.c.agent_version,
            instances.c.heartbeat_interval,
            instances.c.last_seen_ms,
        ).where(instances.c.instance_id.in_(ids))
        return {r[0]: tuple(r[1:]) for r in (await conn.execute(query)).all()}

    return await store.read(read)


async def scenario(url: str, tag: str) -> None:
    store = Store(url)
    await store.migrate()
    ids = [f"mi-{tag}-{n}" for n in "abc"]
    a, b, c = ids

    async def add(conn: Any) -> None:
        for instance_id in ids:
            await conn.execute(
                instances.insert().values(
                    instance_id=instance_id,
                    account="acct",
                    activation_id="act",
                    public_key="k",
                    registered="2026-12-05T00:00:00Z",
                    registered_ms=0,
                    agent_version="0.1",
                )
            )

    await store.write(add)
    batch = ReplicaWrites(store, interval=30)  # no timed flush here: beats flush at once
    expires = int(time.time()) + 300
    before = int(time.time() * 1000)
    try:
        claims = [
            batch.claim_beat(f"{tag}-1", expires, a, 60, "1.9"),
            batch.claim_beat(f"{tag}-2", expires, a, 60, "1.10"),  # a's newer beat
            batch.claim_beat(f"{tag}-3", expires, b, 30, ""),  # "" keeps b's version
            batch.claim_beat(f"{tag}-1", expires, c, 45, "2.0"),  # a nonce already waiting
        ]
        batch.note_seen(c, before)  # a long-poll's last-seen in the same flush
        assert await asyncio.gather(*claims) == [True, True, True, False]
        assert batch.flushes == 1  # all of it in one transaction
        seen = await rows(store, ids)
        assert seen[a][:2] == ("1.10", 60) and seen[b][:2] == ("0.1", 30)
        assert seen[c][:2] == ("0.1", 60)  # the refused beat wrote nothing; last-seen did
        assert all(row[2] >= before for row in seen.values())

        # a nonce stored by an earlier flush: refused, and nothing of its beat is written
        assert await batch.claim_beat(f"{tag}-3", expires, c, 45, "3.0") is False
        assert await rows(store, ids) == seen
    finally:
        await batch.close()
        await store.close()


def test_beats_of_one_flush_are_written_with_new_nonces_only(db_url: str) -> None:
    asyncio.run(scenario(db_url, f"{time.monotonic_ns()}"))
