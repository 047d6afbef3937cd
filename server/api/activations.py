"""CreateActivation, DescribeActivations."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from server import model
from server.api import action
from server.api.idempotency import client_token, replay
from server.api.tags import add_tags, read_tags, render_tags, tags_to_set
from server.rpc import Params, invalid
from server.store import queries as q
from server.store import tags as store_tags
from server.store.conn import Conn

if TYPE_CHECKING:
    from server.state import ServerState


def parse_ip_ranges(text: str) -> str:
    """IpAddressRange: comma-separated CIDRs (default: any IPv4 address)."""
    if not text:
        return "0.0.0.0/0"
    parts = [t.strip() for t in text.split(",") if t.strip()]
    try:
        for part in parts:
            ipaddress.ip_network(part, strict=False)
    except ValueError as exc:
        raise invalid(
            "IpAddressRange",
            "It must be CIDR blocks separated by commas.",
            "AddressRange.InvalidPattern",
        ) from exc
    return ",".join(parts)


@action("CreateActivation", tags=True)
async def create_activation(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """An activation code that lets up to InstanceCount machines register."""
    client_token(p)
    tags = tags_to_set(p)
    now = model.now_ms()
    row = {
        "activation_id": model.new_activation_id(),
        "account": account,
        "description": p.str(
            "Description", max_len=100, too_long=("ActivationDesc.ExceedLimit", 400)
        ),
        "instance_name": p.str(
            "InstanceName", max_len=50, too_long=("InstanceName.ExceedLimit", 400)
        ),
        "instance_count": p.int(
            "InstanceCount", 10, 1, 1000, ("ActivationLimitation.Invalid", 400)
        ),
        "registered_count": 0,
        "deregistered_count": 0,
        "ip_address_range": parse_ip_ranges(
            p.str("IpAddressRange", max_len=256, too_long=("AddressRange.InvalidPattern", 400))
        ),
        "ttl_hours": p.int("TimeToLiveInHours", 4, 1, 876000, ("ActivationTTL.ExceedLimit", 400)),
        "created": model.iso_from_ms(now),
        "created_ms": now,
        "disabled": False,
    }
    code = model.new_activation_code()
    result = {"ActivationId": row["activation_id"], "ActivationCode": code}

    async def _tx(conn: Conn) -> Any:
        prior = await replay(conn, account, "CreateActivation", p, result)
        if prior is not None:
            return prior
        await q.insert_activation(conn, row, code)
        await add_tags(conn, account, "activation", [str(row["activation_id"])], tags)
        return result

    return dict(await state.store.write(_tx))


@action("DescribeActivations", tags=True)
async def describe_activations(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """The account's activations (never their codes)."""
    page = p.page()
    filters: dict[str, Any] = {
        "ActivationId": p.str("ActivationId"),
        "InstanceName": p.str("InstanceName"),
        "Tags": read_tags(p),
    }

    async def _tx(conn: Conn) -> Any:
        total, rows = await q.list_activations(conn, account, filters, page.offset, page.size)
        ids = [r["activation_id"] for r in rows]
        return total, rows, await store_tags.tags_of(conn, account, "activation", ids)

    total, rows, tags = await state.store.read(_tx)
    return {
        **page.fields(total),
        "ActivationList": [
            {
                "ActivationId": r["activation_id"],
                "Description": r["description"],
                "InstanceName": r["instance_name"],
                "InstanceCount": r["instance_count"],
                "RegisteredCount": r["registered_count"],
                "DeregisteredCount": r["deregistered_count"],
                "IpAddressRange": r["ip_address_range"],
                "TimeToLiveInHours": r["ttl_hours"],
                "CreationTime": r["created"],
                "Disabled": bool(r["disabled"]),
                "Tags": render_tags(tags.get(r["activation_id"], [])),
            }
            for r in rows
        ],
    }
