"""Invocations and their per-instance results, as the operator API reads and stops them."""

from __future__ import annotations

import base64
from collections.abc import Sequence, Set
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update

from server import lifecycle, model
from server.store.conn import Conn
from server.store.instances import in_lock_order
from server.store.rows import (
    Row,
    _page,
    _rows,
    get_owned,
    insert_sql,
    numbered,
    numbered_params,
    sql_text,
    where_equal,
)
from server.store.schema import (
    executions,
    invocation_instances,
    invocations,
    output_chunks,
)
from server.store.tags import tagged

_RESULT_COLUMNS = (
    "invoke_id, instance_id, account, status, active, delivered, stop_requested, execution_id, "
    "output, dropped, error_code, error_info, repeats, created_ms, updated_ms"
)
_RESULT_VALUES = (
    "(:invoke, :i{i}, :account, :status, :yes, :d{i}, :no, '', '', 0, '', '', 0, :now, :now)"
)
ROWS_PER_INSERT = 100  # pending results per INSERT statement (InvokeCommand's real limit)


async def insert_invocation(
    conn: Conn, row: Row, instance_ids: Sequence[str], delivered: Set[str] = frozenset()
) -> None:
    """Store an invocation and one pending result per instance (multi-row text statements: an
    InvokeCommand to 100 instances is on the fan-out's path, docs/scale.md). Rows of
    `delivered` are marked delivered at once: their kick carries the task to a parked poll
    (server/api/invocations.py start_invocation)."""
    now = model.now_ms()
    invocation, invocation_params = insert_sql(invocations, row, "v_")
    common = {
        "invoke": row["invoke_id"],
        "account": row["account"],
        "status": lifecycle.initial_status(bool(row["timed"])),
        "yes": True,
        "no": False,
        "now": now,
    }
    # PostgreSQL takes the three as one statement (data-modifying WITH): one round trip, not
    # three, each of which waited its turn behind a fan-out's answers (docs/scale.md)
    together = conn.dialect.name == "postgresql"
    if together:
        common.update(invocation_params)
    else:
        await conn.execute(sql_text(invocation), invocation_params)
    for start in range(0, len(instance_ids), ROWS_PER_INSERT):
        chunk = list(instance_ids[start : start + ROWS_PER_INSERT])
        results = (
            f"INSERT INTO invocation_instances ({_RESULT_COLUMNS}) "
            f"VALUES {numbered(_RESULT_VALUES, len(chunk))}"
        )
        seen = (
            "UPDATE instances SET last_invoked_ms = :now, "
            f"invocation_count = invocation_count + 1 WHERE {in_lock_order(conn, len(chunk))}"
        )
        params = {**common, **numbered_params("i", chunk)}
        marks = numbered_params("d", [iid in delivered for iid in chunk])
        if together:
            first = f"v AS ({invocation}), " if start == 0 else ""
            sql = f"WITH {first}r AS ({results}) {seen}"
            await conn.execute(sql_text(sql), {**params, **marks})
        else:
            await conn.execute(sql_text(results), {**params, **marks})
            await conn.execute(sql_text(seen), params)


# DescribeInvocations' equality filters: parameter -> column
FILTERS = {
    "InvokeId": invocations.c.invoke_id,
    "CommandId": invocations.c.command_id,
    "CommandName": invocations.c.command_name,
    "CommandType": invocations.c.command_type,
    "RepeatMode": invocations.c.repeat_mode,
    "Region": invocations.c.region_id,
}


async def get_invocation(
    conn: Conn, account: str, invoke_id: str, region: str | None = None
) -> Row | None:
    """The account's invocation (in `region` when given)."""
    return await get_owned(conn, invocations, "invoke_id", account, invoke_id, region)


async def list_invocations(
    conn: Conn, account: str, filters: Row, offset: int, limit: int
) -> tuple[int, list[Row]]:
    stmt = select(invocations).where(invocations.c.account == account)
    stmt = where_equal(stmt, filters, FILTERS)
    if filters.get("Timed") is not None:
        stmt = stmt.where(invocations.c.timed.is_(filters["Timed"]))
    if filters.get("InstanceId"):
        stmt = stmt.where(
            invocations.c.invoke_id.in_(
                select(invocation_instances.c.invoke_id).where(
                    invocation_instances.c.instance_id == filters["InstanceId"]
                )
            )
        )
    if filters.get("Tags"):
        stmt = stmt.where(tagged("invocation", invocations.c.invoke_id, account, filters["Tags"]))
    order = (invocations.c.created_ms.desc(), invocations.c.invoke_id)
    return await _page(conn, stmt, order, offset, limit)


async def modify_invocation(conn: Conn, invoke_id: str, values: Row) -> list[str]:
    """Change a timed invocation in place (a new revision the agents reschedule); return the
    instances that still run it."""
    await conn.execute(
        update(invocations)
        .where(invocations.c.invoke_id == invoke_id)
        .values(**values, revision=invocations.c.revision + 1)
    )
    ii = invocation_instances
    rows = await conn.execute(
        select(ii.c.instance_id).where(ii.c.invoke_id == invoke_id, ii.c.active.is_(True))
    )
    return [str(r[0]) for r in rows.all()]


async def instance_results(conn: Conn, invoke_ids: Sequence[str]) -> dict[str, list[Row]]:
    """Per-instance result rows of several invocations."""
    if not invoke_ids:
        return {}
    rows = await _rows(
        conn,
        select(invocation_instances)
        .where(invocation_instances.c.invoke_id.in_(list(invoke_ids)))
        .order_by(invocation_instances.c.instance_id),
    )
    grouped: dict[str, list[Row]] = {}
    for row in rows:
        grouped.setdefault(row["invoke_id"], []).append(row)
    return grouped


async def list_results(
    conn: Conn, account: str, filters: Row, offset: int, limit: int
) -> tuple[int, list[Row]]:
    """Per-instance results joined with their invocation, newest first."""
    ii, inv = invocation_instances, invocations
    stmt = (
        select(
            ii,
            inv.c.command_id,
            inv.c.username,
            inv.c.launcher,
            inv.c.termination_mode,
            inv.c.timed,
            inv.c.repeat_mode,
        )
        .join(inv, inv.c.invoke_id == ii.c.invoke_id)
        .where(ii.c.account == account)
    )
    stmt = _filter_results(stmt, filters, ii.c.status)
    if filters.get("Region"):
        stmt = stmt.where(invocations.c.region_id == filters["Region"])
    if filters.get("Tags"):
        stmt = stmt.where(tagged("invocation", ii.c.invoke_id, account, filters["Tags"]))
    order = (ii.c.created_ms.desc(), ii.c.invoke_id, ii.c.instance_id)
    return await _page(conn, stmt, order, offset, limit)


def _filter_results(stmt: Any, filters: Row, status: Any) -> Any:
    """DescribeInvocationResults' InvokeId / InstanceId / CommandId / status filters."""
    ii, inv = invocation_instances, invocations
    if filters.get("InvokeId"):
        stmt = stmt.where(ii.c.invoke_id == filters["InvokeId"])
    if filters.get("InstanceId"):
        stmt = stmt.where(ii.c.instance_id == filters["InstanceId"])
    if filters.get("CommandId"):
        stmt = stmt.where(inv.c.command_id == filters["CommandId"])
    statuses = filters.get("Statuses")
    if statuses:
        stmt = stmt.where(status.in_(list(statuses)))
    return stmt


async def list_execution_results(
    conn: Conn, account: str, filters: Row, offset: int, limit: int
) -> tuple[int, list[Row]]:
    """One result per execution (an instance not yet run shows its pending row), newest first."""
    ii, inv, ex = invocation_instances, invocations, executions
    ran = and_(
        ex.c.invoke_id == ii.c.invoke_id,
        ex.c.instance_id == ii.c.instance_id,
        ex.c.execution_id != "",  # "" never names a run; guard the outer join anyway
    )
    latest = ex.c.execution_id == ii.c.execution_id
    # a run still going shows the instance's live status (e.g. Stopping); a finished run its own
    status = case(
        (ex.c.execution_id.is_(None), ii.c.status),
        (and_(latest, ex.c.terminal.is_(False)), ii.c.status),
        else_=ex.c.status,
    )
    newest = func.coalesce(ex.c.start_ms, ex.c.finish_ms, ii.c.created_ms)
    stmt = (
        select(
            ii.c.invoke_id,
            ii.c.instance_id,
            ii.c.repeats,
            ii.c.created_ms,
            status.label("status"),
            func.coalesce(ex.c.execution_id, ii.c.execution_id).label("execution_id"),
            case((ex.c.execution_id.is_(None), ii.c.exit_code), else_=ex.c.exit_code).label(
                "exit_code"
            ),
            func.coalesce(ex.c.output, ii.c.output).label("output"),
            func.coalesce(ex.c.dropped, ii.c.dropped).label("dropped"),
            func.coalesce(ex.c.error_code, ii.c.error_code).label("error_code"),
            func.coalesce(ex.c.error_info, ii.c.error_info).label("error_info"),
            case((ex.c.execution_id.is_(None), ii.c.start_ms), else_=ex.c.start_ms).label(
                "start_ms"
            ),
            case((ex.c.execution_id.is_(None), ii.c.finish_ms), else_=ex.c.finish_ms).label(
                "finish_ms"
            ),
            case((or_(ex.c.execution_id.is_(None), latest), ii.c.stop_ms), else_=None).label(
                "stop_ms"
            ),
            newest.label("newest_ms"),
            inv.c.command_id,
            inv.c.username,
            inv.c.launcher,
            inv.c.termination_mode,
            inv.c.timed,
            inv.c.repeat_mode,
        )
        .select_from(ii.join(inv, inv.c.invoke_id == ii.c.invoke_id).outerjoin(ex, ran))
        .where(ii.c.account == account)
    )
    stmt = _filter_results(stmt, filters, status)
    if filters.get("Region"):
        stmt = stmt.where(invocations.c.region_id == filters["Region"])
    if filters.get("Tags"):
        stmt = stmt.where(tagged("invocation", ii.c.invoke_id, account, filters["Tags"]))
    order = (newest.desc(), ii.c.invoke_id, ii.c.instance_id, ex.c.execution_id.desc())
    return await _page(conn, stmt, order, offset, limit)


async def running_output(conn: Conn, row: Row) -> tuple[bytes, int]:
    """Output streamed so far by a running execution: (bytes, dropped)."""
    chunks = await _rows(
        conn,
        select(output_chunks.c.chunk_offset, output_chunks.c.data)
        .where(
            output_chunks.c.invoke_id == row["invoke_id"],
            output_chunks.c.instance_id == row["instance_id"],
            output_chunks.c.execution_id == row["execution_id"],
        )
        .order_by(output_chunks.c.chunk_offset),
    )
    data = b"".join(base64.b64decode(c["data"]) for c in chunks)
    return data, 0


async def stop_invocation(
    conn: Conn, invoke_id: str, instance_ids: Sequence[str] | None
) -> list[str]:
    """Ask instances to stop; undelivered or idle ones stop at once. Returns ids to notify."""
    ii = invocation_instances
    cond = and_(ii.c.invoke_id == invoke_id, ii.c.active.is_(True), ii.c.stop_requested.is_(False))
    if instance_ids:
        cond = and_(cond, ii.c.instance_id.in_(list(instance_ids)))
    rows = await _rows(conn, select(ii.c.instance_id, ii.c.status, ii.c.delivered).where(cond))
    now = model.now_ms()
    notify: list[str] = []
    for row in rows:
        stop = lifecycle.on_stop(lifecycle.Task(row["status"], delivered=row["delivered"]), now)
        values: Row = {"status": stop.status, "stop_requested": True}
        if not stop.active:
            values.update(active=False, stop_ms=stop.stop_ms)
        await conn.execute(
            update(ii)
            .where(ii.c.invoke_id == invoke_id, ii.c.instance_id == row["instance_id"])
            .values(**values, updated_ms=now)
        )
        notify.append(row["instance_id"])
    await conn.execute(
        update(invocations)
        .where(invocations.c.invoke_id == invoke_id)
        .values(stopped=True, revision=invocations.c.revision + 1)
    )
    return notify
