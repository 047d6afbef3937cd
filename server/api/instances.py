"""DescribeManagedInstances, DeregisterManagedInstance, DescribeCloudAssistantStatus,
and the extension action KickAgentUpdate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server import model
from server.api import action
from server.api.tags import read_tags, render_tags
from server.errors import require_found
from server.rpc import ApiError, Params, missing
from server.store import queries as q
from server.store import tags as store_tags
from server.store.conn import Conn
from server.store.instances import rename_instance

INSTANCE_NAME_TOO_LONG = ("InstanceName.ExceedLimit", 400)

if TYPE_CHECKING:
    from server.state import ServerState


async def require_instances(conn: Conn, account: str, ids: list[str], region: str) -> None:
    """InvalidInstance.NotFound unless every id is a managed instance of the account in
    `region` (the region of the activation it registered with)."""
    found = await q.existing_instances(conn, account, ids, region)
    require_found(ids, found, "InvalidInstance.NotFound", "instance")


def is_online(row: dict[str, Any], now_ms: int) -> bool:
    """Online once the agent has connected (a signed request after its registration, which
    only records the registration time) and while heard from within three heartbeats."""
    window = 3 * max(int(row["heartbeat_interval"] or 60), 1) * 1000
    seen = int(row["last_seen_ms"] or 0)
    return seen > int(row["registered_ms"] or 0) and now_ms - seen <= window


def render_managed(row: dict[str, Any], now_ms: int, tags: list[tuple[str, str]]) -> dict[str, Any]:
    """One Instance of DescribeManagedInstances."""
    return {
        "InstanceId": row["instance_id"],
        "InstanceName": row["instance_name"],
        "Hostname": row["hostname"],
        "OsType": row["os_type"],
        "OsVersion": "",
        "AgentVersion": row["agent_version"],
        "ActivationId": row["activation_id"],
        "MachineId": "",
        "InternetIp": "",
        "IntranetIp": row["ip"],
        "RegistrationTime": row["registered"],
        "LastInvokedTime": model.iso_from_ms(row["last_invoked_ms"]),
        "InvocationCount": row["invocation_count"],
        "Connected": is_online(row, now_ms),
        "Tags": render_tags(tags),
    }


@action("DescribeManagedInstances", tags=True)
async def describe_managed_instances(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """Registered (managed) instances of the account."""
    page = p.page()
    filters: dict[str, Any] = {
        "InstanceIds": p.list("InstanceId"),
        "InstanceName": p.str("InstanceName"),
        "ActivationId": p.str("ActivationId"),
        "OsType": p.str("OsType"),
        "InstanceIp": p.str("InstanceIp"),
        "Tags": read_tags(p),
        "Region": p.region(),
    }
    connected = p.raw.get("Connected", "")
    want: bool | None = p.bool("Connected") if connected else None
    offset, limit = page.offset, page.size
    if want is not None:
        offset, limit = 0, 100_000

    async def _tx(conn: Conn) -> Any:
        total, rows = await q.list_instances(conn, account, filters, offset, limit)
        ids = [r["instance_id"] for r in rows]
        return total, rows, await store_tags.tags_of(conn, account, "managedinstance", ids)

    total, rows, tags = await state.store.read(_tx)
    now = model.now_ms()
    items = [render_managed(r, now, tags.get(r["instance_id"], [])) for r in rows]
    if want is not None:
        items = [i for i in items if i["Connected"] is want]
        total = len(items)
        items = items[page.offset : page.offset + page.size]
    return {**page.fields(total), "Instances": items}


@action("DeregisterManagedInstance")
async def deregister_managed_instance(
    state: ServerState, account: str, p: Params
) -> dict[str, Any]:
    """Remove an instance: its key stops working and its pending tasks are cancelled."""
    instance_id = p.str("InstanceId", required=True)

    async def _tx(conn: Conn) -> Any:
        row = await q.deregister_instance(conn, account, instance_id, p.region())
        tags = await store_tags.tags_of(conn, account, "managedinstance", [instance_id])
        await store_tags.remove_tags(conn, account, "managedinstance", [instance_id], None)
        return row, tags.get(instance_id, [])

    row, tags = await state.store.write(_tx)
    if row is None:
        raise ApiError("InvalidInstance.NotFound", "The specified instance does not exist.", 404)
    await state.forget_instance(instance_id)
    return {"Instance": render_managed(row, model.now_ms(), tags)}


@action("ModifyManagedInstance")
async def modify_managed_instance(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """Rename a managed instance."""
    instance_id = p.str("InstanceId", required=True)
    name = p.str("InstanceName", required=True, max_len=128, too_long=INSTANCE_NAME_TOO_LONG)

    async def _tx(conn: Conn) -> Any:
        if not await rename_instance(conn, account, instance_id, name, p.region()):
            raise ApiError(
                "InvalidInstance.NotFound", "The specified instance does not exist.", 404
            )

    await state.store.write(_tx)
    return {"Instance": {"InstanceId": instance_id, "InstanceName": name}}


@action("DescribeCloudAssistantStatus")
async def describe_cloud_assistant_status(
    state: ServerState, account: str, p: Params
) -> dict[str, Any]:
    """Whether each instance's agent is online, its version and last heartbeat."""
    page = p.page()
    filters = {
        "InstanceIds": p.list("InstanceId", too_many=("InstanceIds.ExceedLimit", 403)),
        "OsType": p.str("OSType"),
        "Region": p.region(),
    }

    async def _tx(conn: Conn) -> Any:
        total, rows = await q.list_instances(conn, account, filters, page.offset, page.size)
        active = await q.active_task_counts(conn, [r["instance_id"] for r in rows])
        return total, rows, active

    total, rows, active = await state.store.read(_tx)
    now = model.now_ms()
    return {
        **page.fields(total),
        "InstanceCloudAssistantStatusSet": {
            "InstanceCloudAssistantStatus": [
                {
                    "InstanceId": r["instance_id"],
                    "CloudAssistantStatus": "true" if is_online(r, now) else "false",
                    "CloudAssistantVersion": r["agent_version"],
                    "LastHeartbeatTime": model.iso_from_ms(r["last_seen_ms"]),
                    "OSType": r["os_type"],
                    "ActiveTaskCount": active.get(r["instance_id"], 0),
                    "InvocationCount": r["invocation_count"],
                    "LastInvokedTime": model.iso_from_ms(r["last_invoked_ms"]),
                    "SupportSessionManager": False,
                }
                for r in rows
            ]
        },
    }


@action("KickAgentUpdate")
async def kick_agent_update(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """Extension: ask agents to update now (update_check answers update_now once)."""
    ids = p.list("InstanceId")
    if not ids:
        raise missing("InstanceId.1")
    version = p.str("AgentVersion", max_len=64)

    async def _tx(conn: Conn) -> Any:
        await require_instances(conn, account, ids, p.region())
        await q.request_update(conn, account, ids, version)

    await state.store.write(_tx)
    await state.notifier.publish(ids, {"type": "update", "version": version})
    return {"InstanceIds": {"InstanceId": ids}}
