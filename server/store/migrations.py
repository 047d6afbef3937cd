"""Schema migrations: an ordered list of steps, each run once, recorded in schema_version."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import inspect, select, text

from server.store import schema
from server.store.conn import Conn

log = logging.getLogger(__name__)

Step = Callable[[Conn], Awaitable[None]]


async def _create_v1(conn: Conn) -> None:
    """Version 1: every table of server/store/schema.py."""
    await conn.run_sync(schema.metadata.create_all)


# Columns version 2 added to `executions` (a database created at version 2 has them already).
_EXECUTION_DETAIL = {
    "output": "TEXT NOT NULL DEFAULT ''",
    "dropped": "BIGINT NOT NULL DEFAULT 0",
    "error_code": "VARCHAR(128) NOT NULL DEFAULT ''",
    "error_info": "TEXT NOT NULL DEFAULT ''",
}


async def _add_execution_detail_v2(conn: Conn) -> None:
    """Version 2: each execution keeps its own output and error (execution history)."""
    have = await conn.run_sync(
        lambda sync: {c["name"] for c in inspect(sync).get_columns(schema.executions.name)}
    )
    for name, ddl in _EXECUTION_DETAIL.items():
        if name not in have:
            await conn.execute(text(f"ALTER TABLE executions ADD COLUMN {name} {ddl}"))


async def _add_server_keys_v12(conn: Conn) -> None:
    """Version 12: the control plane's signing key (server/store/serverkeys.py), created now."""
    from server.store import serverkeys

    await serverkeys.create_table(conn)
    await serverkeys.ensure_key(conn)


async def _add_replicas_v16(conn: Conn) -> None:
    """Version 16: replicas announce themselves for the agents' list (server/store/replicas.py)."""
    from server.store import replicas

    await replicas.create_table(conn)


async def _create_missing_tables(conn: Conn) -> None:
    """Create the tables of server/store/schema.py a database does not have yet."""
    await conn.run_sync(lambda sync: schema.metadata.create_all(sync, checkfirst=True))


async def _add_invocation_template_v5(conn: Conn) -> None:
    """Version 5: invocations keep their unsubstituted script (ModifyInvocationAttribute)."""
    have = await conn.run_sync(
        lambda sync: {c["name"] for c in inspect(sync).get_columns(schema.invocations.name)}
    )
    if "template" not in have:
        await conn.execute(
            text("ALTER TABLE invocations ADD COLUMN template TEXT NOT NULL DEFAULT ''")
        )


async def _add_columns(conn: Conn, table: str, columns: dict[str, str]) -> None:
    """ALTER TABLE ADD COLUMN for each of `columns` (name: DDL) the table does not have yet."""
    have = await conn.run_sync(lambda sync: {c["name"] for c in inspect(sync).get_columns(table)})
    for name, ddl in columns.items():
        if name not in have:
            await conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}"))


_REGION = "VARCHAR(64) NOT NULL DEFAULT 'cn-hangzhou'"


async def _add_region_v6(conn: Conn) -> None:
    """Version 6: commands, invocations and activations belong to a region (existing ones to
    the default region, cn-hangzhou)."""
    for table in (schema.commands, schema.invocations, schema.activations):
        await _add_columns(conn, table.name, {"region_id": _REGION})


async def _add_launcher_and_instance_region_v15(conn: Conn) -> None:
    """Version 15: Launcher and TerminationMode of commands and invocations; managed instances
    belong to the region of the activation they registered with."""
    await _add_columns(conn, schema.commands.name, {"launcher": "TEXT NOT NULL DEFAULT ''"})
    await _add_columns(
        conn,
        schema.invocations.name,
        {
            "launcher": "TEXT NOT NULL DEFAULT ''",
            "termination_mode": "VARCHAR(16) NOT NULL DEFAULT 'Process'",
        },
    )
    await _add_columns(conn, schema.instances.name, {"region_id": _REGION})
    await conn.execute(
        text(
            "UPDATE instances SET region_id = (SELECT a.region_id FROM activations a "
            "WHERE a.activation_id = instances.activation_id) WHERE EXISTS (SELECT 1 FROM "
            "activations a WHERE a.activation_id = instances.activation_id)"
        )
    )


# Order is by number; a new step takes a number above the last (7..11 stay unused: a database
# at 12 would never run them).
MIGRATIONS: list[tuple[int, Step]] = [
    (1, _create_v1),
    (2, _add_execution_detail_v2),
    (3, _create_missing_tables),  # client_tokens (ClientToken answers)
    (4, _create_missing_tables),  # tags
    (5, _add_invocation_template_v5),
    (6, _add_region_v6),
    (12, _add_server_keys_v12),
    (13, _create_missing_tables),  # send_files, send_file_instances (SendFile)
    (14, _create_missing_tables),  # cloud_assistant_settings
    (15, _add_launcher_and_instance_region_v15),
    (16, _add_replicas_v16),  # the replicas table (agents' replica list)
]
LATEST = MIGRATIONS[-1][0]


async def current_version(conn: Conn) -> int:
    """The schema version recorded in the database (0 for an empty database)."""
    has_table = await conn.run_sync(
        lambda sync: sync.dialect.has_table(sync, schema.schema_version.name)
    )
    if not has_table:
        return 0
    row = (await conn.execute(select(schema.schema_version.c.version))).first()
    return int(row[0]) if row else 0


async def migrate(conn: Conn) -> tuple[int, int]:
    """Bring the schema to LATEST inside the caller's transaction; return (before, after)."""
    if conn.dialect.name == "postgresql":
        # Several replicas may start at once: one migrates, the others wait, then see it done.
        await conn.execute(text("SELECT pg_advisory_xact_lock(7250314)"))
    before = await current_version(conn)
    if before > LATEST:
        raise RuntimeError(f"database schema version {before} is newer than this server ({LATEST})")
    for version, step in MIGRATIONS:
        if version <= before:
            continue
        log.info("migrating schema to version %d", version)
        await step(conn)
        await conn.execute(schema.schema_version.delete())
        await conn.execute(schema.schema_version.insert().values(id=1, version=version))
    return before, LATEST
