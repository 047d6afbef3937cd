"""Small helpers over an open connection: rows as dicts, one row, one page with its total."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.sql import Select

from server.store.conn import Conn

Row = dict[str, Any]


async def _rows(conn: Conn, stmt: Any, params: dict[str, Any] | None = None) -> list[Row]:
    """Every row of a statement, as dicts."""
    return [dict(r._mapping) for r in (await conn.execute(stmt, params)).all()]


async def _one(conn: Conn, stmt: Any, params: dict[str, Any] | None = None) -> Row | None:
    """The first row of a statement as a dict, or None."""
    row = (await conn.execute(stmt, params)).first()
    return dict(row._mapping) if row else None


async def _page(
    conn: Conn, stmt: Select[Any], order: Sequence[Any], offset: int, limit: int
) -> tuple[int, list[Row]]:
    """Total count and one page of a query."""
    total = (await conn.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
    rows = await _rows(conn, stmt.order_by(*order).offset(offset).limit(limit))
    return int(total), rows


def numbered(template: str, count: int) -> str:
    """`count` copies of `template` ({i}: the copy's index), comma-separated: the VALUES rows or
    the IN list of a multi-row text() statement (one round trip for a batch)."""
    return ", ".join(template.format(i=i) for i in range(count))


def numbered_params(prefix: str, values: Sequence[Any]) -> dict[str, Any]:
    """The parameters of numbered(f":{prefix}{{i}}", len(values))."""
    return {f"{prefix}{i}": value for i, value in enumerate(values)}
