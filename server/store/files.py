"""SendFile: file tasks and their per-instance results (server/api/files.py, the agent API)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, or_, select, update

from server import model
from server.store.conn import Conn
from server.store.rows import Row, _page, _rows
from server.store.schema import instances, send_files
from server.store.schema import send_file_instances as sfi
from server.store.tags import tagged

PENDING, RUNNING, SUCCESS, FAILED = "Pending", "Running", "Success", "Failed"
TIMEOUT, INVALID = "Timeout", "Invalid"
FAILED_LIKE = (FAILED, TIMEOUT, INVALID, "Aborted", "Error")
OPEN = (PENDING, RUNNING)
# how long past its Timeout a listed file may stay unreported before the server gives up on it
REPORT_GRACE_MS = 300_000


def overall_status(statuses: Sequence[str]) -> str:
    """The file task's InvocationStatus from its instances', as the real API words it."""
    if not statuses:
        return PENDING
    for open_status in OPEN:
        if open_status in statuses:
            return open_status
    if all(s == SUCCESS for s in statuses):
        return SUCCESS
    if all(s in FAILED_LIKE for s in statuses):
        return FAILED
    return "PartialFailed"


async def instance_os(conn: Conn, account: str, ids: Sequence[str], region: str) -> dict[str, str]:
    """os_type of each of `ids` that is a registered instance of the account in `region`."""
    rows = await _rows(
        conn,
        select(instances.c.instance_id, instances.c.os_type).where(
            instances.c.account == account,
            instances.c.deregistered.is_(False),
            instances.c.region_id == region,
            instances.c.instance_id.in_(list(ids)),
        ),
    )
    return {r["instance_id"]: r["os_type"] for r in rows}


async def insert_send_file(conn: Conn, row: Row, results: Sequence[Row]) -> None:
    """Store a file task and one result per instance (`results`: instance_id, status,
    error_code, error_info)."""
    now = row["created_ms"]
    deadline = now + row["timeout"] * 1000
    await conn.execute(send_files.insert().values(**row))
    await conn.execute(
        sfi.insert(),
        [
            {
                "invoke_id": row["invoke_id"],
                "created_ms": now,
                "updated_ms": now,
                "deadline_ms": deadline,
                "finish_ms": now if r["status"] != PENDING else None,
                **r,
            }
            for r in results
        ],
    )


async def expire_overdue(conn: Conn, now: int, instance_id: str = "", account: str = "") -> None:
    """Results the agent did not pick up within Timeout (DeliveryTimeout), or picked up and
    never reported (ClientNotResponse), become Timeout."""
    for status, code, info, late in (
        (PENDING, "DeliveryTimeout", "the agent did not fetch the file within Timeout", 0),
        (RUNNING, "ClientNotResponse", "the agent did not report the file", REPORT_GRACE_MS),
    ):
        stmt = update(sfi).where(sfi.c.status == status, sfi.c.deadline_ms + late < now)
        if instance_id:
            stmt = stmt.where(sfi.c.instance_id == instance_id)
        if account:
            owned = select(send_files.c.invoke_id).where(send_files.c.account == account)
            stmt = stmt.where(sfi.c.invoke_id.in_(owned))
        await conn.execute(
            stmt.values(
                status=TIMEOUT, error_code=code, error_info=info, finish_ms=now, updated_ms=now
            )
        )


async def files_for(conn: Conn, instance_id: str, now: int) -> list[Row]:
    """The file tasks an instance should write; listing one marks it Running."""
    await expire_overdue(conn, now, instance_id=instance_id)
    rows = await _rows(
        conn,
        select(send_files)
        .join(sfi, sfi.c.invoke_id == send_files.c.invoke_id)
        .where(sfi.c.instance_id == instance_id, sfi.c.status.in_(OPEN))
        .order_by(send_files.c.created_ms),
    )
    if rows:
        await conn.execute(
            update(sfi)
            .where(
                sfi.c.instance_id == instance_id,
                sfi.c.status == PENDING,
                sfi.c.invoke_id.in_([r["invoke_id"] for r in rows]),
            )
            .values(status=RUNNING, start_ms=now, updated_ms=now)
        )
    return rows


async def record_file_result(
    conn: Conn, instance_id: str, invoke_id: str, report: Row
) -> bool | None:
    """The agent's Success / Failed for one file: None for a file not sent to this instance,
    True for a repeat (the first report wins; it replaces the server's Timeout guess)."""
    now = model.now_ms()
    done = await conn.execute(
        update(sfi)
        .where(
            sfi.c.instance_id == instance_id,
            sfi.c.invoke_id == invoke_id,
            or_(sfi.c.status.in_(OPEN), sfi.c.status == TIMEOUT),
        )
        .values(**report, updated_ms=now)
    )
    if done.rowcount:
        return False
    known = await _rows(
        conn,
        select(sfi.c.status).where(sfi.c.instance_id == instance_id, sfi.c.invoke_id == invoke_id),
    )
    return True if known else None


async def list_send_files(
    conn: Conn, account: str, filters: dict[str, Any], offset: int, limit: int
) -> tuple[int, list[Row]]:
    """The account's file tasks, newest first (InvokeId, Name, InstanceId, Tags, Region)."""
    stmt = select(send_files).where(
        send_files.c.account == account, send_files.c.region_id == filters["Region"]
    )
    for key, column in (("InvokeId", send_files.c.invoke_id), ("Name", send_files.c.name)):
        if filters.get(key):
            stmt = stmt.where(column == filters[key])
    if filters.get("InstanceId"):
        stmt = stmt.where(
            send_files.c.invoke_id.in_(
                select(sfi.c.invoke_id).where(sfi.c.instance_id == filters["InstanceId"])
            )
        )
    if filters.get("Tags"):
        stmt = stmt.where(tagged("invocation", send_files.c.invoke_id, account, filters["Tags"]))
    order = (send_files.c.created_ms.desc(), send_files.c.invoke_id)
    return await _page(conn, stmt, order, offset, limit)


async def file_results(conn: Conn, invoke_ids: Sequence[str]) -> dict[str, list[Row]]:
    """Each file task's per-instance results, by instance id."""
    found: dict[str, list[Row]] = {}
    if not invoke_ids:
        return found
    rows = await _rows(
        conn,
        select(sfi)
        .where(and_(sfi.c.invoke_id.in_(list(invoke_ids))))
        .order_by(sfi.c.invoke_id, sfi.c.instance_id),
    )
    for row in rows:
        found.setdefault(row["invoke_id"], []).append(row)
    return found
