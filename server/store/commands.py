"""Stored commands (CreateCommand … DeleteCommand)."""

from __future__ import annotations

from sqlalchemy import delete, select, update

from server.store.conn import Conn
from server.store.rows import Row, _one, _page
from server.store.schema import (
    commands,
)
from server.store.tags import tagged


async def insert_command(conn: Conn, row: Row) -> None:
    await conn.execute(commands.insert().values(**row))


async def get_command(
    conn: Conn, account: str, command_id: str, region: str | None = None
) -> Row | None:
    """The account's command (in `region` when given)."""
    stmt = select(commands).where(
        commands.c.account == account, commands.c.command_id == command_id
    )
    if region is not None:
        stmt = stmt.where(commands.c.region_id == region)
    return await _one(conn, stmt)


async def list_commands(
    conn: Conn, account: str, filters: Row, offset: int, limit: int
) -> tuple[int, list[Row]]:
    stmt = select(commands).where(commands.c.account == account)
    for key, column in (
        ("CommandId", commands.c.command_id),
        ("Name", commands.c.name),
        ("Type", commands.c.type),
        ("Description", commands.c.description),
        ("Region", commands.c.region_id),
    ):
        if filters.get(key):
            stmt = stmt.where(column == filters[key])
    if filters.get("Tags"):
        stmt = stmt.where(tagged("command", commands.c.command_id, account, filters["Tags"]))
    order = (commands.c.created_ms.desc(), commands.c.command_id)
    return await _page(conn, stmt, order, offset, limit)


async def update_command(conn: Conn, account: str, command_id: str, values: Row) -> int:
    result = await conn.execute(
        update(commands)
        .where(commands.c.account == account, commands.c.command_id == command_id)
        .values(**values)
    )
    return int(result.rowcount or 0)


async def delete_command(conn: Conn, account: str, command_id: str) -> int:
    result = await conn.execute(
        delete(commands).where(commands.c.account == account, commands.c.command_id == command_id)
    )
    return int(result.rowcount or 0)
