"""ClientToken records: the first answer of a create-type call, replayed to its retries."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import delete, select, text

from server.store.conn import Conn
from server.store.rows import _one
from server.store.schema import client_tokens

_CLAIM = text(
    "INSERT INTO client_tokens (account, action, token, fingerprint, result, expires_ms) "
    "VALUES (:account, :action, :token, :fingerprint, :result, :expires_ms) "
    "ON CONFLICT DO NOTHING"
)


async def claim_token(
    conn: Conn,
    key: tuple[str, str, str],
    fingerprint: str,
    result: dict[str, Any],
    now_ms: int,
    expires_ms: int,
) -> tuple[str, dict[str, Any]] | None:
    """Record `result` under (account, action, token); None when this call is the first in
    the window, else the (fingerprint, answer) of the call that was. A concurrent claim waits
    for the first one's transaction (PostgreSQL row lock, SQLite's single writer)."""
    account, action, token = key
    values = {
        "account": account,
        "action": action,
        "token": token,
        "fingerprint": fingerprint,
        "result": json.dumps(result),
        "expires_ms": expires_ms,
    }
    await conn.execute(
        delete(client_tokens).where(
            (client_tokens.c.account == account) & (client_tokens.c.expires_ms < now_ms)
        )
    )
    if (await conn.execute(_CLAIM, values)).rowcount:
        return None
    where = (
        (client_tokens.c.account == account)
        & (client_tokens.c.action == action)
        & (client_tokens.c.token == token)
    )
    row = await _one(conn, select(client_tokens).where(where))
    if row is None or row["expires_ms"] <= now_ms:  # gone or expired meanwhile: start afresh
        await conn.execute(delete(client_tokens).where(where))
        await conn.execute(_CLAIM, values)
        return None
    return str(row["fingerprint"]), dict(json.loads(row["result"]))


async def purge_tokens(conn: Conn, now_ms: int) -> int:
    """Forget ClientTokens past their window."""
    done = await conn.execute(delete(client_tokens).where(client_tokens.c.expires_ms < now_ms))
    return int(done.rowcount or 0)
