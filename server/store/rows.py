"""Small helpers over an open connection: rows as dicts, one row, one page with its total; an
account's own row by its key (read, change, delete); equality filters."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Boolean, Table, delete, func, select, text, update
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import TextClause

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


@functools.lru_cache(maxsize=512)
def sql_text(sql: str) -> TextClause:
    """text(sql), built once per SQL string: text() parses the bind parameters with a regex
    every time, and a numbered statement comes in a few sizes run over and over (InvokeCommand
    and the batched writes are on the fan-out's path)."""
    return text(sql)


def numbered_params(prefix: str, values: Sequence[Any]) -> dict[str, Any]:
    """The parameters of numbered(f":{prefix}{{i}}", len(values))."""
    return {f"{prefix}{i}": value for i, value in enumerate(values)}


def insert_sql(table: Table, row: Row, prefix: str = "") -> tuple[str, Row]:
    """A prepared INSERT of one row (per table and set of columns) and its parameters (named
    `prefix` + column): what `table.insert().values(**row)` does, a column left out getting
    its default, without compiling a statement each time (InvokeCommand's row: ~0.3 ms)."""
    values = dict(row)
    for column in table.columns:
        default = column.default
        if column.name not in values and default is not None and default.is_scalar:
            values[column.name] = default.arg  # type: ignore[attr-defined]
    names = sorted(values)
    marks = ", ".join(f":{prefix}{name}" for name in names)
    sql = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({marks})"
    return sql, {f"{prefix}{name}": values[name] for name in names}


def where_equal(stmt: Any, filters: Row, columns: Mapping[str, Any]) -> Any:
    """`stmt` narrowed to rows whose column equals each of `filters` named in `columns`
    (filter name -> column); an absent or empty filter narrows nothing."""
    for key, column in columns.items():
        if filters.get(key):
            stmt = stmt.where(column == filters[key])
    return stmt


def _owned(table: Table, key: str, account: str, value: str) -> tuple[Any, Any]:
    """The WHERE clauses of `account`'s row whose `key` column is `value`."""
    return table.c.account == account, table.c[key] == value


async def get_owned(
    conn: Conn, table: Table, key: str, account: str, value: str, region: str | None = None
) -> Row | None:
    """The account's row whose `key` column is `value` (in `region` when given).

    A prepared text statement, not a select(): InvokeCommand reads its command so on the
    fan-out's path, and building and caching a select() cost ~10 times the lookup."""
    sql = f"SELECT * FROM {table.name} WHERE account = :account AND {key} = :value"
    params = {"account": account, "value": value}
    if region is not None:
        sql += " AND region_id = :region"
        params["region"] = region
    return typed(table, await _one(conn, sql_text(sql), params))


@functools.lru_cache(maxsize=64)
def _boolean_columns(table: Table) -> tuple[str, ...]:
    return tuple(c.name for c in table.columns if isinstance(c.type, Boolean))


def typed(table: Table, row: Row | None) -> Row | None:
    """A row read by a text statement as a select() of `table` gives it: SQLite stores
    booleans as 0 and 1 (the schema's only type a text statement leaves untyped)."""
    if row is not None:
        for name in _boolean_columns(table):
            if row.get(name) is not None:
                row[name] = bool(row[name])
    return row


async def update_owned(
    conn: Conn, table: Table, key: str, account: str, value: str, values: Row
) -> int:
    """Change the account's row whose `key` column is `value`; the number of rows changed."""
    done = await conn.execute(
        update(table).where(*_owned(table, key, account, value)).values(**values)
    )
    return int(done.rowcount or 0)


async def delete_owned(conn: Conn, table: Table, key: str, account: str, value: str) -> int:
    """Delete the account's row whose `key` column is `value`; the number of rows deleted."""
    done = await conn.execute(delete(table).where(*_owned(table, key, account, value)))
    return int(done.rowcount or 0)
