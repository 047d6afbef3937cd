"""Every query the server runs, as functions over an open connection (one transaction)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import string
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, case, delete, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import Select

from server import model
from server.store.conn import Conn
from server.store.schema import (
    access_keys,
    activations,
    commands,
    executions,
    instances,
    invocation_instances,
    invocations,
    nonces,
    output_chunks,
)

Row = dict[str, Any]


def _insert(conn: Conn, table: Any) -> Any:
    """A dialect insert that supports ON CONFLICT DO NOTHING."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


async def _rows(conn: Conn, stmt: Any, params: dict[str, Any] | None = None) -> list[Row]:
    return [dict(r._mapping) for r in (await conn.execute(stmt, params)).all()]


async def _one(conn: Conn, stmt: Any, params: dict[str, Any] | None = None) -> Row | None:
    row = (await conn.execute(stmt, params)).first()
    return dict(row._mapping) if row else None


async def _page(
    conn: Conn, stmt: Select[Any], order: Sequence[Any], offset: int, limit: int
) -> tuple[int, list[Row]]:
    """Total count and one page of a query."""
    total = (await conn.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
    rows = await _rows(conn, stmt.order_by(*order).offset(offset).limit(limit))
    return int(total), rows


# --- access keys and nonces ---------------------------------------------------------------


_SECRET_ALPHABET = string.ascii_letters + string.digits


async def create_access_key(conn: Conn, account: str) -> tuple[str, str]:
    """A new AccessKey pair for `account`."""
    key_id = "LTAI" + secrets.token_hex(10)
    # Alphanumeric like the real ones: a secret starting with "-" would read as an option.
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(30))
    await conn.execute(
        access_keys.insert().values(
            access_key_id=key_id,
            secret=secret,
            account=account,
            created_ms=model.now_ms(),
            enabled=True,
        )
    )
    return key_id, secret


async def get_access_key(conn: Conn, key_id: str) -> Row | None:
    return await _one(conn, select(access_keys).where(access_keys.c.access_key_id == key_id))


async def list_access_keys(conn: Conn) -> list[Row]:
    """Every AccessKey without its secret, oldest first."""
    ak = access_keys
    return await _rows(
        conn,
        select(ak.c.access_key_id, ak.c.account, ak.c.created_ms, ak.c.enabled).order_by(
            ak.c.created_ms, ak.c.access_key_id
        ),
    )


async def set_access_key_enabled(conn: Conn, key_id: str, enabled: bool) -> bool:
    """Enable or disable an AccessKey; False if there is no such key."""
    done = await conn.execute(
        update(access_keys).where(access_keys.c.access_key_id == key_id).values(enabled=enabled)
    )
    return bool(done.rowcount)


_USE_NONCE = text(
    "INSERT INTO nonces (nonce, expires) VALUES (:nonce, :expires) ON CONFLICT DO NOTHING"
)


async def use_nonce(conn: Conn, key: str, expires: int) -> bool:
    """Record a nonce; False when it was already used (a replay)."""
    result = await conn.execute(_USE_NONCE, {"nonce": key, "expires": expires})
    return bool(result.rowcount)


async def purge_nonces(conn: Conn, now: int) -> int:
    """Forget nonces whose timestamps can no longer pass the window check."""
    result = await conn.execute(delete(nonces).where(nonces.c.expires < now))
    return int(result.rowcount or 0)


# --- commands -------------------------------------------------------------------------------


async def insert_command(conn: Conn, row: Row) -> None:
    await conn.execute(commands.insert().values(**row))


async def get_command(conn: Conn, account: str, command_id: str) -> Row | None:
    return await _one(
        conn,
        select(commands).where(commands.c.account == account, commands.c.command_id == command_id),
    )


async def list_commands(
    conn: Conn, account: str, filters: Row, offset: int, limit: int
) -> tuple[int, list[Row]]:
    stmt = select(commands).where(commands.c.account == account)
    if filters.get("CommandId"):
        stmt = stmt.where(commands.c.command_id == filters["CommandId"])
    if filters.get("Name"):
        stmt = stmt.where(commands.c.name == filters["Name"])
    if filters.get("Type"):
        stmt = stmt.where(commands.c.type == filters["Type"])
    if filters.get("Description"):
        stmt = stmt.where(commands.c.description == filters["Description"])
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


# --- instances and activations ---------------------------------------------------------------


async def existing_instances(conn: Conn, account: str, ids: Sequence[str]) -> set[str]:
    """Which of `ids` are registered, not deregistered, instances of `account`."""
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        rows = await conn.execute(
            select(instances.c.instance_id).where(
                instances.c.account == account,
                instances.c.deregistered.is_(False),
                instances.c.instance_id.in_(chunk),
            )
        )
        found.update(r[0] for r in rows)
    return found


async def list_instances(
    conn: Conn, account: str, filters: Row, offset: int, limit: int
) -> tuple[int, list[Row]]:
    stmt = select(instances).where(
        instances.c.account == account, instances.c.deregistered.is_(False)
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


async def list_activations(
    conn: Conn, account: str, filters: Row, offset: int, limit: int
) -> tuple[int, list[Row]]:
    stmt = select(activations).where(activations.c.account == account)
    if filters.get("ActivationId"):
        stmt = stmt.where(activations.c.activation_id == filters["ActivationId"])
    if filters.get("InstanceName"):
        stmt = stmt.where(activations.c.instance_name == filters["InstanceName"])
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


async def deregister_instance(conn: Conn, account: str, instance_id: str) -> Row | None:
    """Mark an instance deregistered; its pending tasks become Cancelled."""
    row = await _one(
        conn,
        select(instances).where(
            instances.c.account == account,
            instances.c.instance_id == instance_id,
            instances.c.deregistered.is_(False),
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
        .values(status=model.CANCELLED, active=False, updated_ms=now, stop_ms=now)
    )
    return row


_HEARTBEAT = text(
    "UPDATE instances SET last_seen_ms = :now, heartbeat_interval = :interval, "
    "agent_version = CASE WHEN :version = '' THEN agent_version ELSE :version END "
    "WHERE instance_id = :id"
)
_SEEN = text("UPDATE instances SET last_seen_ms = :now WHERE instance_id = :id")


async def record_heartbeat(
    conn: Conn, instance_id: str, now_ms: int, interval: int, version: str
) -> None:
    """Mark an instance heard from (and remember its agent version)."""
    await conn.execute(
        _HEARTBEAT, {"now": now_ms, "interval": interval, "version": version, "id": instance_id}
    )


async def record_seen(conn: Conn, instance_id: str, now_ms: int) -> None:
    await conn.execute(_SEEN, {"now": now_ms, "id": instance_id})


async def request_update(conn: Conn, account: str, ids: Sequence[str], version: str) -> None:
    await conn.execute(
        update(instances)
        .where(instances.c.account == account, instances.c.instance_id.in_(list(ids)))
        .values(update_requested=True, update_version=version)
    )


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
            invocation_instances.c.status.in_([model.PENDING, model.RUNNING, model.STOPPING]),
        )
        .group_by(invocation_instances.c.instance_id)
    )
    return {r[0]: int(r[1]) for r in rows}


# --- invocations ----------------------------------------------------------------------------


async def insert_invocation(conn: Conn, row: Row, instance_ids: Sequence[str]) -> None:
    """Store an invocation and one pending result per instance."""
    now = model.now_ms()
    await conn.execute(invocations.insert().values(**row))
    status = model.SCHEDULED if row["timed"] else model.PENDING
    await conn.execute(
        invocation_instances.insert(),
        [
            {
                "invoke_id": row["invoke_id"],
                "instance_id": iid,
                "account": row["account"],
                "status": status,
                "active": True,
                "delivered": False,
                "stop_requested": False,
                "execution_id": "",
                "output": "",
                "dropped": 0,
                "error_code": "",
                "error_info": "",
                "repeats": 0,
                "created_ms": now,
                "updated_ms": now,
            }
            for iid in instance_ids
        ],
    )
    await conn.execute(
        update(commands)
        .where(commands.c.command_id == row["command_id"])
        .values(invoke_times=commands.c.invoke_times + 1)
    )
    await conn.execute(
        update(instances)
        .where(instances.c.instance_id.in_(list(instance_ids)))
        .values(last_invoked_ms=now, invocation_count=instances.c.invocation_count + 1)
    )


async def get_invocation(conn: Conn, account: str, invoke_id: str) -> Row | None:
    return await _one(
        conn,
        select(invocations).where(
            invocations.c.account == account, invocations.c.invoke_id == invoke_id
        ),
    )


async def list_invocations(
    conn: Conn, account: str, filters: Row, offset: int, limit: int
) -> tuple[int, list[Row]]:
    stmt = select(invocations).where(invocations.c.account == account)
    for key, column in (
        ("InvokeId", invocations.c.invoke_id),
        ("CommandId", invocations.c.command_id),
        ("CommandName", invocations.c.command_name),
        ("CommandType", invocations.c.command_type),
        ("RepeatMode", invocations.c.repeat_mode),
    ):
        if filters.get(key):
            stmt = stmt.where(column == filters[key])
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
    order = (invocations.c.created_ms.desc(), invocations.c.invoke_id)
    return await _page(conn, stmt, order, offset, limit)


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
            inv.c.timed,
            inv.c.repeat_mode,
        )
        .join(inv, inv.c.invoke_id == ii.c.invoke_id)
        .where(ii.c.account == account)
    )
    stmt = _filter_results(stmt, filters, ii.c.status)
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
            inv.c.timed,
            inv.c.repeat_mode,
        )
        .select_from(ii.join(inv, inv.c.invoke_id == ii.c.invoke_id).outerjoin(ex, ran))
        .where(ii.c.account == account)
    )
    stmt = _filter_results(stmt, filters, status)
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
        if row["status"] == model.RUNNING or (row["status"] == model.PENDING and row["delivered"]):
            values: Row = {"status": model.STOPPING, "stop_requested": True}
        else:
            final = model.CANCELLED if row["status"] == model.PENDING else model.STOPPED
            values = {"status": final, "stop_requested": True, "active": False, "stop_ms": now}
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


# --- the agent side ---------------------------------------------------------------------------


# The agent API's hot path: prepared text statements (valid on SQLite and PostgreSQL), so a
# request costs a few cheap executes instead of building and caching SQL constructs each time.

_TASKS_FOR = text(
    "SELECT ii.stop_requested, ii.delivered, inv.* FROM invocation_instances ii "
    "JOIN invocations inv ON inv.invoke_id = ii.invoke_id "
    "WHERE ii.instance_id = :id AND ii.active = :yes ORDER BY inv.created_ms"
)
_MARK_DELIVERED = text(
    "UPDATE invocation_instances SET delivered = :yes WHERE instance_id = :id AND invoke_id = :invoke"
)


async def tasks_for(conn: Conn, instance_id: str) -> tuple[list[Row], list[str]]:
    """Tasks an instance should have, and invocations it should stop; marks them delivered."""
    rows = await _rows(conn, _TASKS_FOR, {"id": instance_id, "yes": True})
    run = [r for r in rows if not r["stop_requested"]]
    stop = [r["invoke_id"] for r in rows if r["stop_requested"]]
    fresh = [r["invoke_id"] for r in run if not r["delivered"]]
    for invoke_id in fresh:  # usually one: what arrived since the last listing
        await conn.execute(_MARK_DELIVERED, {"yes": True, "id": instance_id, "invoke": invoke_id})
    return run, stop


_RESULT_ROW = text(
    "SELECT ii.*, inv.timed, inv.repeat_mode, inv.frequency FROM invocation_instances ii "
    "JOIN invocations inv ON inv.invoke_id = ii.invoke_id "
    "WHERE ii.instance_id = :instance AND ii.invoke_id = :invoke"
)


async def _result_row(conn: Conn, instance_id: str, invoke_id: str) -> Row | None:
    return await _one(conn, _RESULT_ROW, {"instance": instance_id, "invoke": invoke_id})


def _newer_execution(candidate: str, current: str) -> bool:
    """Whether `candidate` is the same or a later execution than `current`."""
    if not current:
        return True
    if candidate.isdigit() and current.isdigit():
        return int(candidate) >= int(current)
    return candidate >= current


_START_EXECUTION = text(
    "INSERT INTO executions (invoke_id, instance_id, execution_id, status, terminal, start_ms) "
    "VALUES (:invoke, :instance, :execution, :status, :no, :start) ON CONFLICT DO NOTHING"
)
_EXECUTION_DONE = text(
    "SELECT terminal FROM executions "
    "WHERE invoke_id = :invoke AND instance_id = :instance AND execution_id = :execution"
)
_ADD_CHUNK = text(
    "INSERT INTO output_chunks (invoke_id, instance_id, execution_id, chunk_offset, data) "
    "VALUES (:invoke, :instance, :execution, :offset, :data) ON CONFLICT DO NOTHING"
)
_MARK_RUNNING = text(
    "UPDATE invocation_instances SET status = :status, updated_ms = :now "
    "WHERE instance_id = :instance AND invoke_id = :invoke"
)
_NEW_EXECUTION = text(
    "UPDATE invocation_instances SET status = :status, updated_ms = :now, "
    "execution_id = :execution, start_ms = :start, exit_code = NULL, output = '', dropped = 0, "
    "error_code = '', error_info = '', finish_ms = NULL "
    "WHERE instance_id = :instance AND invoke_id = :invoke"
)


async def record_running(
    conn: Conn,
    instance_id: str,
    invoke_id: str,
    execution_id: str,
    start_ms: int,
    offset: int,
    data: str,
) -> bool:
    """Store a running-output chunk once per offset and mark the execution Running."""
    row = await _result_row(conn, instance_id, invoke_id)
    if row is None:
        return False
    key = {"invoke": invoke_id, "instance": instance_id, "execution": execution_id}
    await conn.execute(
        _START_EXECUTION, {**key, "status": model.RUNNING, "no": False, "start": start_ms}
    )
    done = await _one(conn, _EXECUTION_DONE, key)
    if done and done["terminal"]:
        return True  # a late chunk of a finished execution changes nothing
    if data:
        await conn.execute(_ADD_CHUNK, {**key, "offset": offset, "data": data})
    current = row["execution_id"]
    if (
        _newer_execution(execution_id, current)
        and row["status"] != model.STOPPING
        and (row["active"] or current == execution_id)
    ):
        params = {**key, "status": model.RUNNING, "now": model.now_ms(), "start": start_ms}
        if current == execution_id:
            if row["status"] != model.RUNNING:
                await conn.execute(_MARK_RUNNING, params)
        else:
            await conn.execute(_NEW_EXECUTION, params)
    return True


# First terminal report wins: insert, or update a non-terminal row; 0 rows means a repeat.
_FINISH_EXECUTION = text(
    "INSERT INTO executions (invoke_id, instance_id, execution_id, status, terminal, exit_code, "
    "start_ms, finish_ms, output, dropped, error_code, error_info) VALUES (:invoke, :instance, "
    ":execution, :status, :yes, :exit_code, :start, :finish, :output, :dropped, :error_code, "
    ":error_info) ON CONFLICT (invoke_id, instance_id, execution_id) DO UPDATE SET "
    "status = excluded.status, terminal = excluded.terminal, exit_code = excluded.exit_code, "
    "start_ms = excluded.start_ms, finish_ms = excluded.finish_ms, output = excluded.output, "
    "dropped = excluded.dropped, error_code = excluded.error_code, "
    "error_info = excluded.error_info WHERE executions.terminal = :no"
)
_APPLY_RESULT = text(
    "UPDATE invocation_instances SET repeats = repeats + 1, updated_ms = :now, "
    "execution_id = :execution, exit_code = :exit_code, output = :output, dropped = :dropped, "
    "error_code = :error_code, error_info = :error_info, start_ms = :start, "
    "finish_ms = :finish, status = :status, active = :active, stop_ms = :stop "
    "WHERE instance_id = :instance AND invoke_id = :invoke"
)
_COUNT_REPEAT = text(
    "UPDATE invocation_instances SET repeats = repeats + 1, updated_ms = :now "
    "WHERE instance_id = :instance AND invoke_id = :invoke"
)
_DROP_CHUNKS = text(
    "DELETE FROM output_chunks "
    "WHERE invoke_id = :invoke AND instance_id = :instance AND execution_id = :execution"
)


async def record_terminal(
    conn: Conn,
    instance_id: str,
    invoke_id: str,
    execution_id: str,
    status: str,
    report: Row,
) -> bool | None:
    """Apply a terminal report; True if it was a duplicate, None if the task is unknown."""
    row = await _result_row(conn, instance_id, invoke_id)
    if row is None:
        return None
    key = {"invoke": invoke_id, "instance": instance_id, "execution": execution_id}
    won = await conn.execute(
        _FINISH_EXECUTION,
        {
            **key,
            "status": status,
            "yes": True,
            "no": False,
            "exit_code": report["exit_code"],
            "start": report["start_ms"],
            "finish": report["finish_ms"],
            "output": report["output"],
            "dropped": report["dropped"],
            "error_code": report["error_code"],
            "error_info": report["error_info"],
        },
    )
    if not won.rowcount:
        return True
    now = model.now_ms()
    if not _newer_execution(execution_id, row["execution_id"]):
        await conn.execute(_COUNT_REPEAT, {**key, "now": now})  # a late, older execution
        return False
    ends = (
        not row["timed"]
        or row["stop_requested"]
        or model.is_one_time_schedule(row["repeat_mode"], row["frequency"])
        or status in (model.STOPPED, model.TERMINATED)
    )
    await conn.execute(
        _APPLY_RESULT,
        {
            **key,
            "now": now,
            "exit_code": report["exit_code"],
            "output": report["output"],
            "dropped": report["dropped"],
            "error_code": report["error_code"],
            "error_info": report["error_info"],
            "start": report["start_ms"],
            "finish": report["finish_ms"],
            "status": status if ends else model.SCHEDULED,
            "active": not ends,
            "stop": now if ends and status in model.STOPPED_LIKE else row["stop_ms"],
        },
    )
    if row["status"] in (model.RUNNING, model.STOPPING) or row["execution_id"] != execution_id:
        await conn.execute(_DROP_CHUNKS, key)  # chunks exist only once it reported running
    return False


# --- execution history retention ----------------------------------------------------------

# Finished runs of timed invocations, other than each task's latest (which its
# invocation_instances row mirrors): older than the cutoff, or beyond the newest `keep`.
_PURGE_OLD_EXECUTIONS = text(
    "DELETE FROM executions WHERE terminal = :yes AND finish_ms < CAST(:cutoff AS BIGINT) "
    "AND NOT EXISTS (SELECT 1 FROM invocation_instances ii WHERE ii.invoke_id = "
    "executions.invoke_id AND ii.instance_id = executions.instance_id "
    "AND ii.execution_id = executions.execution_id)"
)
_PURGE_EXTRA_EXECUTIONS = text(
    "DELETE FROM executions WHERE (invoke_id, instance_id, execution_id) IN ("
    "SELECT invoke_id, instance_id, execution_id FROM (SELECT e.invoke_id, e.instance_id, "
    "e.execution_id, e.terminal, ROW_NUMBER() OVER (PARTITION BY e.invoke_id, e.instance_id "
    "ORDER BY COALESCE(e.finish_ms, e.start_ms, 0) DESC, e.execution_id DESC) AS newest "
    "FROM executions e) ranked WHERE ranked.newest > CAST(:keep AS BIGINT) "
    "AND ranked.terminal = :yes) "
    "AND NOT EXISTS (SELECT 1 FROM invocation_instances ii WHERE ii.invoke_id = "
    "executions.invoke_id AND ii.instance_id = executions.instance_id "
    "AND ii.execution_id = executions.execution_id)"
)


async def purge_history(conn: Conn, cutoff_ms: int, keep: int) -> int:
    """Forget finished executions older than cutoff_ms or beyond the newest `keep` per task."""
    old = await conn.execute(_PURGE_OLD_EXECUTIONS, {"yes": True, "cutoff": cutoff_ms})
    extra = await conn.execute(_PURGE_EXTRA_EXECUTIONS, {"yes": True, "keep": keep})
    return max(old.rowcount, 0) + max(extra.rowcount, 0)


# --- offline instances ----------------------------------------------------------------------

OFFLINE_ERROR = "InstanceOffline"

# One-shot tasks past their deadline (started, or created if never started, + Timeout + grace)
# on instances not heard from within three heartbeat intervals: nobody will report them.
_ABANDONED = text(
    "SELECT ii.invoke_id, ii.instance_id, ii.execution_id FROM invocation_instances ii "
    "JOIN invocations inv ON inv.invoke_id = ii.invoke_id "
    "JOIN instances i ON i.instance_id = ii.instance_id "
    "WHERE ii.active = :yes AND inv.timed = :no AND ii.status IN (:pending, :running, :stopping) "
    "AND i.last_seen_ms < CAST(:now AS BIGINT) - 3000 * i.heartbeat_interval "
    "AND COALESCE(ii.start_ms, ii.created_ms) + 1000 * inv.timeout + CAST(:grace AS BIGINT) "
    "< CAST(:now AS BIGINT)"
)
_FAIL_EXECUTION = text(
    "INSERT INTO executions (invoke_id, instance_id, execution_id, status, terminal, "
    "finish_ms, error_code, error_info) VALUES (:invoke, :instance, :execution, :status, :yes, "
    ":now, :error_code, :error_info) ON CONFLICT (invoke_id, instance_id, execution_id) "
    "DO UPDATE SET status = excluded.status, terminal = excluded.terminal, "
    "finish_ms = excluded.finish_ms, error_code = excluded.error_code, "
    "error_info = excluded.error_info WHERE executions.terminal = :no"
)
_FAIL_TASK = text(
    "UPDATE invocation_instances SET status = :status, active = :no, execution_id = :execution, "
    "error_code = :error_code, error_info = :error_info, finish_ms = :now, updated_ms = :now "
    "WHERE invoke_id = :invoke AND instance_id = :instance AND active = :yes"
)


async def fail_abandoned_tasks(conn: Conn, now_ms: int, grace_ms: int) -> list[tuple[str, str]]:
    """Mark one-shot tasks of long-offline instances Failed (InstanceOffline); return them."""
    flags = {"yes": True, "no": False}
    statuses = {"pending": model.PENDING, "running": model.RUNNING, "stopping": model.STOPPING}
    rows = await _rows(conn, _ABANDONED, {**flags, **statuses, "now": now_ms, "grace": grace_ms})
    failed: list[tuple[str, str]] = []
    for row in rows:
        values = {
            **flags,
            "invoke": row["invoke_id"],
            "instance": row["instance_id"],
            "execution": row["execution_id"] or "0",  # a one-shot task's only execution
            "status": model.FAILED,
            "now": now_ms,
            "error_code": OFFLINE_ERROR,
            "error_info": "the instance went offline and did not report the task in time",
        }
        if not (await conn.execute(_FAIL_EXECUTION, values)).rowcount:
            continue  # its terminal report arrived meanwhile: that result stands
        await conn.execute(_FAIL_TASK, values)
        await conn.execute(_DROP_CHUNKS, values)
        failed.append((row["invoke_id"], row["instance_id"]))
    return failed


def decode_parameters(text: str) -> dict[str, str]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
