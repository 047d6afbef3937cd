"""Tags of commands, invocations, activations and managed instances (TagResources & co.)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, delete, exists, or_, select

from server.store.conn import Conn
from server.store.rows import Row, _page, _rows
from server.store.schema import activations, commands, instances, invocations, send_files, tags

# A tag filter: (key, value); value None matches any value of the key.
TagFilter = Sequence[tuple[str, "str | None"]]

# resource type (as the real API names it) -> its table's id column and account column
RESOURCES: dict[str, tuple[Any, Any]] = {
    "command": (commands.c.command_id, commands.c.account),
    "invocation": (invocations.c.invoke_id, invocations.c.account),
    "activation": (activations.c.activation_id, activations.c.account),
    "managedinstance": (instances.c.instance_id, instances.c.account),
}
# SendFile's tasks (f-…) are invocations too, as in the real API
ALSO: dict[str, tuple[Any, Any]] = {"invocation": (send_files.c.invoke_id, send_files.c.account)}


def tagged(resource_type: str, id_column: Any, account: str, wanted: TagFilter) -> Any:
    """A WHERE clause: the resource at `id_column` carries every tag of `wanted`."""
    clauses = []
    for key, value in wanted:
        match = and_(
            tags.c.account == account,
            tags.c.resource_type == resource_type,
            tags.c.resource_id == id_column,
            tags.c.tag_key == key,
        )
        if value is not None:
            match = and_(match, tags.c.tag_value == value)
        clauses.append(exists().where(match))
    return and_(*clauses)


async def existing_resources(
    conn: Conn, account: str, resource_type: str, ids: Sequence[str], region: str
) -> set[str]:
    """Which of `ids` are resources of this type owned by `account` in `region` (a managed
    instance's region is its activation's)."""
    found: set[str] = set()
    for id_column, account_column in _tables(resource_type):
        stmt = select(id_column).where(
            account_column == account,
            id_column.in_(list(ids)),
            id_column.table.c.region_id == region,
        )
        if resource_type == "managedinstance":
            stmt = stmt.where(instances.c.deregistered.is_(False))
        found.update(str(r[0]) for r in (await conn.execute(stmt)).all())
    return found


def _tables(resource_type: str) -> list[tuple[Any, Any]]:
    """The (id column, account column) of each table holding resources of this type."""
    return [RESOURCES[resource_type], *([ALSO[resource_type]] if resource_type in ALSO else [])]


async def set_tags(
    conn: Conn,
    account: str,
    resource_type: str,
    ids: Sequence[str],
    pairs: Sequence[tuple[str, str]],
) -> None:
    """Add tags to resources, replacing the value of a key they already have."""
    if not ids or not pairs:
        return
    await remove_tags(conn, account, resource_type, ids, [k for k, _ in pairs])
    await conn.execute(
        tags.insert(),
        [
            {
                "account": account,
                "resource_type": resource_type,
                "resource_id": rid,
                "tag_key": key,
                "tag_value": value,
            }
            for rid in ids
            for key, value in pairs
        ],
    )


async def remove_tags(
    conn: Conn, account: str, resource_type: str, ids: Sequence[str], keys: Sequence[str] | None
) -> int:
    """Remove the tags `keys` (every tag when None) from resources."""
    stmt = delete(tags).where(
        tags.c.account == account,
        tags.c.resource_type == resource_type,
        tags.c.resource_id.in_(list(ids)),
    )
    if keys is not None:
        stmt = stmt.where(tags.c.tag_key.in_(list(keys)))
    done = await conn.execute(stmt)
    return int(done.rowcount or 0)


async def tags_of(
    conn: Conn, account: str, resource_type: str, ids: Sequence[str]
) -> dict[str, list[tuple[str, str]]]:
    """Each resource's tags, keys sorted."""
    found: dict[str, list[tuple[str, str]]] = {}
    if not ids:
        return found
    rows = await _rows(
        conn,
        select(tags.c.resource_id, tags.c.tag_key, tags.c.tag_value)
        .where(
            tags.c.account == account,
            tags.c.resource_type == resource_type,
            tags.c.resource_id.in_(list(ids)),
        )
        .order_by(tags.c.resource_id, tags.c.tag_key),
    )
    for row in rows:
        found.setdefault(row["resource_id"], []).append((row["tag_key"], row["tag_value"]))
    return found


async def list_tag_resources(
    conn: Conn,
    account: str,
    resource_type: str,
    ids: Sequence[str],
    wanted: TagFilter,
    offset: int,
    limit: int,
    region: str,
) -> tuple[int, list[Row]]:
    """(resource, tag) pairs of resources among `ids` (any when empty) carrying `wanted`."""
    t = tags.alias("t")
    stmt = select(t.c.resource_id, t.c.tag_key, t.c.tag_value).where(
        t.c.account == account, t.c.resource_type == resource_type
    )
    if ids:
        stmt = stmt.where(t.c.resource_id.in_(list(ids)))
    stmt = stmt.where(
        or_(
            *(
                t.c.resource_id.in_(select(id_column).where(id_column.table.c.region_id == region))
                for id_column, _ in _tables(resource_type)
            )
        )
    )
    if wanted:
        stmt = stmt.where(tagged(resource_type, t.c.resource_id, account, wanted))
    return await _page(conn, stmt, (t.c.resource_id, t.c.tag_key), offset, limit)
