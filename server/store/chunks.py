"""Trimming of the running-output chunks one execution has stored (server/output_limits.py
decides which; this runs it in the caller's transaction)."""

from __future__ import annotations

from sqlalchemy import text

from server.output_limits import MAX_CHUNKS, StoredChunk, chunks_to_drop
from server.store.conn import Conn

_LIST_CHUNKS = text(
    "SELECT chunk_offset, LENGTH(data) AS b64_len FROM output_chunks "
    "WHERE invoke_id = :invoke AND instance_id = :instance AND execution_id = :execution"
)
_DROP_CHUNK = text(
    "DELETE FROM output_chunks WHERE invoke_id = :invoke AND instance_id = :instance "
    "AND execution_id = :execution AND chunk_offset = :offset"
)


async def trim_chunks(
    conn: Conn,
    instance_id: str,
    invoke_id: str,
    execution_id: str,
    quota: int,
    max_chunks: int = MAX_CHUNKS,
) -> int:
    """Delete the chunks outside the newest `quota` bytes (or beyond `max_chunks`); return how
    many went."""
    key = {"invoke": invoke_id, "instance": instance_id, "execution": execution_id}
    rows = (await conn.execute(_LIST_CHUNKS, key)).all()
    stored = [
        StoredChunk(int(r._mapping["chunk_offset"]), int(r._mapping["b64_len"]) * 3 // 4)
        for r in rows
    ]
    drop = chunks_to_drop(stored, quota, max_chunks)
    for offset in drop:
        await conn.execute(_DROP_CHUNK, {**key, "offset": offset})
    return len(drop)
