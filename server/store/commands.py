"""Stored commands (CreateCommand … DeleteCommand)."""

from __future__ import annotations

from sqlalchemy import func, select

from server.store.conn import Conn
from server.store.rows import (
    Row,
    _page,
    delete_owned,
    get_owned,
    update_owned,
    where_equal,
)
from server.store.schema import commands, invocations
from server.store.tags import tagged

# DescribeCommands' equality filters: parameter -> column
FILTERS = {
    "CommandId": commands.c.command_id,
    "Name": commands.c.name,
    "Type": commands.c.type,
    "Description": commands.c.description,
    "Region": commands.c.region_id,
}


async def insert_command(conn: Conn, row: Row) -> None:
    await conn.execute(commands.insert().values(**row))


async def get_command(
    conn: Conn, account: str, command_id: str, region: str | None = None
) -> Row | None:
    """The account's command (in `region` when given)."""
    return await get_owned(conn, commands, "command_id", account, command_id, region)


async def list_commands(
    conn: Conn, account: str, filters: Row, offset: int, limit: int
) -> tuple[int, list[Row]]:
    stmt = where_equal(select(commands).where(commands.c.account == account), filters, FILTERS)
    if filters.get("Tags"):
        stmt = stmt.where(tagged("command", commands.c.command_id, account, filters["Tags"]))
    order = (commands.c.created_ms.desc(), commands.c.command_id)
    total, rows = await _page(conn, stmt, order, offset, limit)
    counts = await invoke_counts(conn, [row["command_id"] for row in rows])
    for row in rows:
        row["invoke_times"] = counts.get(row["command_id"], 0)
    return total, rows


async def invoke_counts(conn: Conn, command_ids: list[str]) -> dict[str, int]:
    """How many invocations each command has (InvokeTimes; invocations are never deleted).

    Counted when asked, not kept in the command's row: every InvokeCommand of a command
    updated that one row, and concurrent calls queued on its lock until each committed
    (`commands.invoke_times` is left as it was at schema version 16)."""
    if not command_ids:
        return {}
    stmt = (
        select(invocations.c.command_id, func.count())
        .where(invocations.c.command_id.in_(command_ids))
        .group_by(invocations.c.command_id)
    )
    return {str(r[0]): int(r[1]) for r in (await conn.execute(stmt)).all()}


async def update_command(conn: Conn, account: str, command_id: str, values: Row) -> int:
    return await update_owned(conn, commands, "command_id", account, command_id, values)


async def delete_command(conn: Conn, account: str, command_id: str) -> int:
    return await delete_owned(conn, commands, "command_id", account, command_id)
