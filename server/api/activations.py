"""CreateActivation, DescribeActivations, DisableActivation, DeleteActivation."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from server import model
from server.api import action
from server.api.idempotency import client_token, replay
from server.api.tags import add_tags, read_tags, render_tags, tags_to_set
from server.rpc import ApiError, Params, invalid
from server.store import queries as q
from server.store import tags as store_tags
from server.store.conn import Conn
from server.store.instances import delete_activation as delete_activation_row
from server.store.instances import update_activation

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
        "region_id": p.region(),
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
        "Region": p.region(),
    }

    async def _tx(conn: Conn) -> Any:
        total, rows = await q.list_activations(conn, account, filters, page.offset, page.size)
        ids = [r["activation_id"] for r in rows]
        return total, rows, await store_tags.tags_of(conn, account, "activation", ids)

    total, rows, tags = await state.store.read(_tx)
    return {
        **page.fields(total),
        "ActivationList": [render_activation(r, tags.get(r["activation_id"], [])) for r in rows],
    }


def render_activation(row: dict[str, Any], tags: list[tuple[str, str]]) -> dict[str, Any]:
    """One activation as DescribeActivations and friends answer it (never its code)."""
    return {
        "ActivationId": row["activation_id"],
        "Description": row["description"],
        "InstanceName": row["instance_name"],
        "InstanceCount": row["instance_count"],
        "RegisteredCount": row["registered_count"],
        "DeregisteredCount": row["deregistered_count"],
        "IpAddressRange": row["ip_address_range"],
        "TimeToLiveInHours": row["ttl_hours"],
        "CreationTime": row["created"],
        "Disabled": bool(row["disabled"]),
        "Tags": render_tags(tags),
    }


def activation_not_found() -> ApiError:
    return ApiError(
        "InvalidActivationId.NotFound", "The specified activation ID does not exist.", 404
    )


async def own_activation(
    conn: Conn, account: str, activation_id: str, region: str
) -> dict[str, Any]:
    """The account's activation in `region`, or InvalidActivationId.NotFound."""
    row = await q.get_activation(conn, activation_id)
    if row is None or row["account"] != account or row["region_id"] != region:
        raise activation_not_found()
    return row


@action("DisableActivation")
async def disable_activation(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """Stop an activation code from registering any more machines (registered ones stay)."""
    activation_id = p.str("ActivationId", required=True)

    async def _tx(conn: Conn) -> Any:
        await own_activation(conn, account, activation_id, p.region())
        await update_activation(conn, account, activation_id, {"disabled": True})
        tags = await store_tags.tags_of(conn, account, "activation", [activation_id])
        return await own_activation(conn, account, activation_id, p.region()), tags.get(
            activation_id, []
        )

    row, tags = await state.store.write(_tx)
    return {"Activation": render_activation(row, tags)}


@action("DeleteActivation")
async def delete_activation(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """Delete an activation code no registered machine still uses."""
    activation_id = p.str("ActivationId", required=True)

    async def _tx(conn: Conn) -> Any:
        row = await own_activation(conn, account, activation_id, p.region())
        in_use = int(row["registered_count"]) - int(row["deregistered_count"])
        if in_use > 0:
            raise ApiError(
                "Activation.InUse",
                f"{in_use} managed instance(s) registered with this activation: deregister "
                "them first (DeregisterManagedInstance), or DisableActivation instead.",
                403,
            )
        tags = await store_tags.tags_of(conn, account, "activation", [activation_id])
        await delete_activation_row(conn, account, activation_id)
        await store_tags.remove_tags(conn, account, "activation", [activation_id], None)
        return row, tags.get(activation_id, [])

    row, tags = await state.store.write(_tx)
    return {"Activation": render_activation(row, tags)}
