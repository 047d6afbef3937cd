"""AccessKeys of the operator API and the nonces of signed requests (replay protection)."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass

from sqlalchemy import delete, select, text, update

from server import model
from server.store.conn import Conn
from server.store.rows import Row, _one, _rows, numbered, sql_text, typed
from server.store.schema import (
    access_keys,
    nonces,
)

_SECRET_ALPHABET = string.ascii_letters + string.digits


async def create_access_key(conn: Conn, account: str) -> tuple[str, str]:
    """A new AccessKey pair for `account`."""
    key_id = "LTAI" + secrets.token_hex(10)
    # Alphanumeric like the real ones: a secret starting with "-" would read as an option.
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(30))
    await conn.execute(
        access_keys.insert().values(
            access_key_id=key_id,
            secret=secret,
            account=account,
            created_ms=model.now_ms(),
            enabled=True,
        )
    )
    return key_id, secret


_GET_ACCESS_KEY = text("SELECT * FROM access_keys WHERE access_key_id = :id")


async def get_access_key(conn: Conn, key_id: str) -> Row | None:
    """The access key (every operator request reads it: a prepared text statement)."""
    return typed(access_keys, await _one(conn, _GET_ACCESS_KEY, {"id": key_id}))


async def list_access_keys(conn: Conn) -> list[Row]:
    """Every AccessKey without its secret, oldest first."""
    ak = access_keys
    return await _rows(
        conn,
        select(ak.c.access_key_id, ak.c.account, ak.c.created_ms, ak.c.enabled).order_by(
            ak.c.created_ms, ak.c.access_key_id
        ),
    )


async def set_access_key_enabled(conn: Conn, key_id: str, enabled: bool) -> bool:
    """Enable or disable an AccessKey; False if there is no such key."""
    done = await conn.execute(
        update(access_keys).where(access_keys.c.access_key_id == key_id).values(enabled=enabled)
    )
    return bool(done.rowcount)


_USE_NONCE = text(
    "INSERT INTO nonces (nonce, expires) VALUES (:nonce, :expires) ON CONFLICT DO NOTHING"
)


@dataclass
class NonceClaim:
    """A request's nonce, to be recorded in its transaction: by a statement that can take it
    along (PostgreSQL's one-statement terminal report, server/store/tasks.py), else on its own.
    `fresh` is None until recorded, then whether it was new (False: a replay)."""

    key: str
    expires: int
    fresh: bool | None = None


async def use_nonce(conn: Conn, key: str, expires: int) -> bool:
    """Record a nonce; False when it was already used (a replay)."""
    result = await conn.execute(_USE_NONCE, {"nonce": key, "expires": expires})
    return bool(result.rowcount)


NONCE_CHUNK = 200  # rows per multi-row nonce insert (well under SQLite's variable limit)


async def use_nonces(conn: Conn, items: list[tuple[str, int]]) -> set[str]:
    """Record many nonces at once; return those that were new (the others were used before).

    One multi-row INSERT … ON CONFLICT DO NOTHING RETURNING per NONCE_CHUNK nonces: the shared
    table's primary key decides, across replicas, which single request a nonce belongs to."""
    fresh: set[str] = set()
    for start in range(0, len(items), NONCE_CHUNK):
        chunk = items[start : start + NONCE_CHUNK]
        sql = (
            f"INSERT INTO nonces (nonce, expires) VALUES {numbered('(:n{i}, :e{i})', len(chunk))}"
            " ON CONFLICT DO NOTHING RETURNING nonce"
        )
        params: dict[str, object] = {}
        for i, (key, expires) in enumerate(chunk):
            params[f"n{i}"] = key
            params[f"e{i}"] = expires
        result = await conn.execute(sql_text(sql), params)
        fresh.update(str(row[0]) for row in result)
    return fresh


async def purge_nonces(conn: Conn, now: int) -> int:
    """Forget nonces whose timestamps can no longer pass the window check."""
    result = await conn.execute(delete(nonces).where(nonces.c.expires < now))
    return int(result.rowcount or 0)
