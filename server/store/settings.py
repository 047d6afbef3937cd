"""Cloud Assistant settings, one JSON object per (account, region, setting type).

A managed instance belongs to the region of the activation it registered with: that region's
settings are the ones its agent receives (docs/operator-api.md, Cloud Assistant settings).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select, text

from server.store.conn import Conn
from server.store.rows import _one
from server.store.schema import activations, cloud_assistant_settings, instances

AGENT_UPGRADE = "AgentUpgradeConfig"  # the one setting type this server keeps

_PUT = text(
    "INSERT INTO cloud_assistant_settings (account, region_id, setting_type, value, updated_ms) "
    "VALUES (:account, :region, :kind, :value, :now) "
    "ON CONFLICT (account, region_id, setting_type) "
    "DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms"
)


async def get_setting(conn: Conn, account: str, region: str, kind: str) -> dict[str, Any] | None:
    """The stored setting, or None when the region never had one."""
    table = cloud_assistant_settings
    row = await _one(
        conn,
        select(table.c.value).where(
            table.c.account == account, table.c.region_id == region, table.c.setting_type == kind
        ),
    )
    return dict(json.loads(row["value"])) if row else None


async def put_setting(
    conn: Conn, account: str, region: str, kind: str, value: dict[str, Any], now_ms: int
) -> None:
    """Store (replace) a setting."""
    params = {"account": account, "region": region, "kind": kind, "value": json.dumps(value)}
    await conn.execute(_PUT, {**params, "now": now_ms})


async def instance_region(
    conn: Conn, instance_id: str, default_region: str
) -> tuple[str, str] | None:
    """(account, region) of a registered instance: its activation's region (`default_region`
    when the activation is gone)."""
    row = await _one(
        conn,
        select(instances.c.account, activations.c.region_id)
        .select_from(
            instances.outerjoin(
                activations, activations.c.activation_id == instances.c.activation_id
            )
        )
        .where(instances.c.instance_id == instance_id),
    )
    if row is None:
        return None
    return str(row["account"]), str(row["region_id"] or default_region)


async def region_instances(conn: Conn, account: str, region: str) -> list[str]:
    """Registered instances of the account whose activation is in `region`."""
    rows = await conn.execute(
        select(instances.c.instance_id)
        .select_from(
            instances.join(activations, activations.c.activation_id == instances.c.activation_id)
        )
        .where(
            instances.c.account == account,
            instances.c.deregistered.is_(False),
            activations.c.region_id == region,
        )
    )
    return [str(r[0]) for r in rows]
