"""Managed instances and their activations: registration, heartbeats, update kicks."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from sqlalchemy import func, select, text, update

from server import lifecycle, model
from server.store.conn import Conn
from server.store.rows import (
    Row,
    _one,
    _page,
    delete_owned,
    numbered,
    numbered_params,
    sql_text,
    update_owned,
    where_equal,
)
from server.store.schema import (
    activations,
    instances,
    invocation_instances,
)
from server.store.tags import tagged


async def existing_instances(conn: Conn, account: str, ids: Sequence[str], region: str) -> set[str]:
    """Which of `ids` are registered, not deregistered, instances of `account` in `region`
    (a prepared text statement: every InvokeCommand asks, on the fan-out's path). Looked up by
    primary key alone and filtered here: with `account = ?` in the WHERE, SQLite walks the
    account index, i.e. every instance of a 10,000-instance account, once per call."""
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        sql = (
            "SELECT instance_id, account, deregistered, region_id FROM instances "
            f"WHERE instance_id IN ({numbered(':i{i}', len(chunk))})"
        )
        rows = await conn.execute(sql_text(sql), numbered_params("i", chunk))
        found.update(str(r[0]) for r in rows if r[1] == account and not r[2] and r[3] == region)
    return found


async def list_instances(
    conn: Conn, account: str, filters: Row, offset: int, limit: int
) -> tuple[int, list[Row]]:
    stmt = select(instances).where(
        instances.c.account == account,
        instances.c.deregistered.is_(False),
        instances.c.region_id == filters["Region"],
    )
    if filters.get("InstanceIds"):
        stmt = stmt.where(instances.c.instance_id.in_(filters["InstanceIds"]))
    if filters.get("InstanceName"):
        stmt = stmt.where(instances.c.instance_name == filters["InstanceName"])
    if filters.get("ActivationId"):
        stmt = stmt.where(instances.c.activation_id == filters["ActivationId"])
    if filters.get("OsType"):
        stmt = stmt.where(func.lower(instances.c.os_type) == filters["OsType"].lower())
    if filters.get("InstanceIp"):
        stmt = stmt.where(instances.c.ip == filters["InstanceIp"])
    if filters.get("Tags"):
        stmt = stmt.where(
            tagged("managedinstance", instances.c.instance_id, account, filters["Tags"])
        )
    order = (instances.c.registered_ms, instances.c.instance_id)
    return await _page(conn, stmt, order, offset, limit)


_GET_INSTANCE = text("SELECT * FROM instances WHERE instance_id = :id")


async def get_instance(conn: Conn, instance_id: str) -> Row | None:
    return await _one(conn, _GET_INSTANCE, {"id": instance_id})


async def insert_activation(conn: Conn, row: Row, code: str) -> None:
    await conn.execute(activations.insert().values(**row, code_hash=hash_code(code)))


def hash_code(code: str) -> str:
    """Activation codes are stored hashed; only the operator ever sees the code."""
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


async def get_activation(conn: Conn, activation_id: str) -> Row | None:
    return await _one(conn, select(activations).where(activations.c.activation_id == activation_id))


async def update_activation(conn: Conn, account: str, activation_id: str, values: Row) -> int:
    """Change an activation of `account`; the number of rows changed."""
    return await update_owned(conn, activations, "activation_id", account, activation_id, values)


async def delete_activation(conn: Conn, account: str, activation_id: str) -> int:
    """Delete an activation of `account`; the number of rows deleted."""
    return await delete_owned(conn, activations, "activation_id", account, activation_id)


async def rename_instance(
    conn: Conn, account: str, instance_id: str, name: str, region: str
) -> int:
    """Set a managed instance's name (in `region`); the number of rows changed."""
    done = await conn.execute(
        update(instances)
        .where(
            instances.c.account == account,
            instances.c.instance_id == instance_id,
            instances.c.deregistered.is_(False),
            instances.c.region_id == region,
        )
        .values(instance_name=name)
    )
    return int(done.rowcount or 0)


async def list_activations(
    conn: Conn, account: str, filters: Row, offset: int, limit: int
) -> tuple[int, list[Row]]:
    stmt = select(activations).where(activations.c.account == account)
    c = activations.c
    equal = {
        "ActivationId": c.activation_id,
        "InstanceName": c.instance_name,
        "Region": c.region_id,
    }
    stmt = where_equal(stmt, filters, equal)
    if filters.get("Tags"):
        stmt = stmt.where(
            tagged("activation", activations.c.activation_id, account, filters["Tags"])
        )
    order = (activations.c.created_ms.desc(), activations.c.activation_id)
    return await _page(conn, stmt, order, offset, limit)


async def claim_activation(conn: Conn, activation_id: str) -> bool:
    """Count one registration against the activation's limit; False when it is used up."""
    result = await conn.execute(
        update(activations)
        .where(
            activations.c.activation_id == activation_id,
            activations.c.registered_count < activations.c.instance_count,
        )
        .values(registered_count=activations.c.registered_count + 1)
    )
    return bool(result.rowcount)


async def upsert_instance(conn: Conn, row: Row) -> None:
    """Register (or re-register, replacing the key of) an instance."""
    existing = await get_instance(conn, row["instance_id"])
    if existing is None:
        await conn.execute(instances.insert().values(**row))
    else:
        await conn.execute(
            update(instances).where(instances.c.instance_id == row["instance_id"]).values(**row)
        )


async def deregister_instance(
    conn: Conn, account: str, instance_id: str, region: str
) -> Row | None:
    """Mark an instance (of `region`) deregistered; its pending tasks become Cancelled."""
    row = await _one(
        conn,
        select(instances).where(
            instances.c.account == account,
            instances.c.instance_id == instance_id,
            instances.c.deregistered.is_(False),
            instances.c.region_id == region,
        ),
    )
    if row is None:
        return None
    await conn.execute(
        update(instances).where(instances.c.instance_id == instance_id).values(deregistered=True)
    )
    await conn.execute(
        update(activations)
        .where(activations.c.activation_id == row["activation_id"])
        .values(deregistered_count=activations.c.deregistered_count + 1)
    )
    now = model.now_ms()
    await conn.execute(
        update(invocation_instances)
        .where(
            invocation_instances.c.instance_id == instance_id,
            invocation_instances.c.active.is_(True),
        )
        .values(status=lifecycle.on_deregister(), active=False, updated_ms=now, stop_ms=now)
    )
    return row


# a heartbeat: last-seen, the interval told, the agent version ("": unchanged)
_HEARTBEAT_SET = (
    "UPDATE instances SET last_seen_ms = :now, heartbeat_interval = :interval, "
    "agent_version = CASE WHEN :version = '' THEN agent_version ELSE :version END"
)


SEEN_CHUNK = 500  # instance ids per batched last-seen UPDATE


async def record_seen(
    conn: Conn, seen: Sequence[str], beats: dict[str, tuple[int, str]], now_ms: int
) -> None:
    """Mark instances heard from at `now_ms`: the last-seen time of `seen`, and the heartbeats
    `beats` (instance id -> interval told, agent version; "" keeps the version). On PostgreSQL
    every row is locked first, all in instance id order (as in_lock_order does for one
    statement): the updates, one per kind of write and SEEN_CHUNK instances, then wait for
    nothing. Several UPDATEs each in its own order could deadlock with an InvokeCommand."""
    ids = sorted({*seen, *beats})
    if conn.dialect.name == "postgresql":
        for start in range(0, len(ids), SEEN_CHUNK):
            chunk = ids[start : start + SEEN_CHUNK]
            lock = (
                "SELECT instance_id FROM instances WHERE instance_id IN "
                f"({numbered(':i{i}', len(chunk))}) ORDER BY instance_id FOR UPDATE"
            )
            await conn.execute(sql_text(lock), numbered_params("i", chunk))
    groups: dict[tuple[int, str] | None, list[str]] = {}
    for instance_id in ids:
        groups.setdefault(beats.get(instance_id), []).append(instance_id)
    for beat, group in groups.items():
        head = "UPDATE instances SET last_seen_ms = :now"
        params: dict[str, object] = {"now": now_ms}
        if beat is not None:
            head = _HEARTBEAT_SET
            params.update(interval=beat[0], version=beat[1])
        for start in range(0, len(group), SEEN_CHUNK):
            chunk = group[start : start + SEEN_CHUNK]
            sql = f"{head} WHERE instance_id IN ({numbered(':i{i}', len(chunk))})"
            await conn.execute(sql_text(sql), {**params, **numbered_params("i", chunk)})


def in_lock_order(conn: Conn, count: int) -> str:
    """The WHERE clause of an UPDATE of the instances :i0 … :i{count-1}. On PostgreSQL their
    rows are locked first, in instance id order: two such UPDATEs in concurrent transactions
    (InvokeCommand's, a replica's batched last-seen) locked shared rows in the order of their
    own plans and deadlocked, a second's stall each (deadlock_timeout). SQLite has one writer."""
    ids = numbered(":i{i}", count)
    if conn.dialect.name != "postgresql":
        return f"instance_id IN ({ids})"
    return (
        "instance_id IN (SELECT instance_id FROM instances "
        f"WHERE instance_id IN ({ids}) ORDER BY instance_id FOR UPDATE)"
    )


async def request_update(conn: Conn, account: str, ids: Sequence[str], version: str) -> None:
    """KickAgentUpdate: the account's instances `ids` take `version` at their next update
    check. Their rows are locked in id order (in_lock_order), as every multi-row write does."""
    ordered = sorted(set(ids))
    for start in range(0, len(ordered), SEEN_CHUNK):
        chunk = ordered[start : start + SEEN_CHUNK]
        sql = (
            "UPDATE instances SET update_requested = :yes, update_version = :version "
            f"WHERE account = :account AND {in_lock_order(conn, len(chunk))}"
        )
        params = {"yes": True, "version": version, "account": account}
        await conn.execute(sql_text(sql), {**params, **numbered_params("i", chunk)})


_TAKE_UPDATE = text(
    "UPDATE instances SET update_requested = :no "
    "WHERE instance_id = :id AND update_requested = :yes"
)
_UPDATE_VERSION = text("SELECT update_version FROM instances WHERE instance_id = :id")


async def take_update(conn: Conn, instance_id: str) -> tuple[bool, str]:
    """Consume a pending update request (true once per KickAgentUpdate)."""
    result = await conn.execute(_TAKE_UPDATE, {"no": False, "yes": True, "id": instance_id})
    if not result.rowcount:
        return False, ""
    row = await _one(conn, _UPDATE_VERSION, {"id": instance_id})
    return True, str(row["update_version"]) if row else ""


async def active_task_counts(conn: Conn, ids: Sequence[str]) -> dict[str, int]:
    """Running/pending task count per instance."""
    if not ids:
        return {}
    rows = await conn.execute(
        select(invocation_instances.c.instance_id, func.count())
        .where(
            invocation_instances.c.instance_id.in_(list(ids)),
            invocation_instances.c.status.in_(list(lifecycle.UNFINISHED)),
        )
        .group_by(invocation_instances.c.instance_id)
    )
    return {r[0]: int(r[1]) for r in rows}
