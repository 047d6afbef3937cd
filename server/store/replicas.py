"""The replicas of one control plane, as they announce themselves in the shared database.

Each `assist-server serve --advertise-url URL` writes its row every few seconds (a heartbeat);
the agents' replica list (docs/agent-protocol.md, Replicas) is every row seen recently, so a
replica that died drops out of it by itself.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, MetaData, String, Table, select

from server.store.conn import Conn

metadata = MetaData()

replicas = Table(
    "replicas",
    metadata,
    Column("url", String(512), primary_key=True),  # the base URL agents use for this replica
    Column("replica", String(64), nullable=False, default=""),  # the process's replica id
    Column("seen_ms", BigInteger, nullable=False),  # last heartbeat (ms since the epoch)
)


async def create_table(conn: Conn) -> None:
    """Migration step: the replicas table."""
    await conn.run_sync(metadata.create_all)


async def announce(conn: Conn, url: str, replica: str, now_ms: int) -> None:
    """Insert or refresh this replica's row."""
    updated = await conn.execute(
        replicas.update().where(replicas.c.url == url).values(replica=replica, seen_ms=now_ms)
    )
    if not updated.rowcount:
        await conn.execute(replicas.insert().values(url=url, replica=replica, seen_ms=now_ms))


async def withdraw(conn: Conn, url: str, replica: str) -> None:
    """Remove this replica's row (a clean stop), unless another process took the URL over."""
    await conn.execute(
        replicas.delete().where(replicas.c.url == url).where(replicas.c.replica == replica)
    )


async def live(conn: Conn, since_ms: int) -> list[str]:
    """URLs of the replicas heard from since `since_ms`, in a stable order."""
    stmt = select(replicas.c.url).where(replicas.c.seen_ms >= since_ms).order_by(replicas.c.url)
    return [str(row[0]) for row in (await conn.execute(stmt)).all()]
