"""SendFile and DescribeSendFileResults: Cloud Assistant's file distribution.

The file travels to the agent in the signed task list (docs/agent-protocol.md, File task); the
agent writes it (agent/filewrite.py) and reports Success or Failed with the real API's
ErrorCode. Windows instances are not supported by this server: their result is Invalid.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from server import model
from server.api import action
from server.api.idempotency import client_token, replay
from server.api.invocations import TOO_MANY_INSTANCES
from server.api.tags import add_tags, read_tags, render_tags, tags_to_set
from server.errors import require_found
from server.rpc import ApiError, Params, invalid, missing
from server.store import files as store_files
from server.store import tags as store_tags
from server.store.conn import Conn

if TYPE_CHECKING:
    from server.state import ServerState

MAX_CONTENT = 32 * 1024  # bytes of the file, after decoding
MIN_TIMEOUT = 10  # seconds: a shorter Timeout is raised to this, as the real API does
STATUSES = ("Pending", "Running", "Success", "Failed", "PartialFailed")
WINDOWS_INFO = "SendFile to Windows instances is not supported by this server"


def read_content(p: Params) -> str:
    """Content as base64 of the file's bytes, whatever ContentType was used; at most 32 KB."""
    content_type = p.enum("ContentType", ("PlainText", "Base64"), "PlainText")
    text = p.raw.get("Content", "")
    if text == "":
        raise missing("Content")
    if content_type == "Base64":
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise invalid("Content", "It is not valid Base64.") from exc
    else:
        data = text.encode("utf-8")
    if len(data) > MAX_CONTENT:
        raise ApiError(
            "InvalidParam.Content",
            f"The file is {len(data)} bytes; at most {MAX_CONTENT} bytes are allowed.",
        )
    return base64.b64encode(data).decode("ascii")


def read_name(p: Params) -> str:
    name = p.str("Name", required=True, max_len=255)
    if name in (".", "..") or "/" in name or "\x00" in name:
        raise invalid("Name", "It must be a file name, without '/'.", "InvalidParam.Name")
    return name


def read_target_dir(p: Params) -> str:
    target = p.str("TargetDir", required=True, max_len=255)
    if "\x00" in target or not target.startswith("/"):
        raise invalid(
            "TargetDir",
            "It must be an absolute Linux path (Windows paths are not supported here).",
            "InvalidParam.TargetDir",
        )
    return target


def read_mode(p: Params) -> str:
    mode = p.str("FileMode", max_len=5, default="0644")
    if any(c not in "01234567" for c in mode) or int(mode, 8) > 0o7777:
        raise invalid("FileMode", "It must be an octal mode such as 0644.", "InvalidParam.FileMode")
    return mode


@action("SendFile", tags=True)
async def send_file(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """Send one file to instances; the agents write it into TargetDir."""
    client_token(p)
    tags = tags_to_set(p)
    ids = p.list("InstanceId", max_items=state.max_invoke_instances, too_many=TOO_MANY_INSTANCES)
    if not ids:
        raise missing("InstanceId.1", "MissingParam.InstanceId")
    timeout = p.int("Timeout", 60, 1, model.MAX_TIMEOUT, ("InvalidParam.Timeout", 400))
    assert timeout is not None
    now = model.now_ms()
    invoke_id = model.new_id("f-")
    row = {
        "invoke_id": invoke_id,
        "account": account,
        "region_id": p.region(),
        "name": read_name(p),
        "description": p.str("Description", max_len=512),
        "content": read_content(p),
        "content_type": p.enum("ContentType", ("PlainText", "Base64"), "PlainText"),
        "target_dir": read_target_dir(p),
        "file_mode": read_mode(p),
        "file_owner": p.str("FileOwner", max_len=64, default="root"),
        "file_group": p.str("FileGroup", max_len=64, default="root"),
        "overwrite": p.bool("Overwrite", False),
        "timeout": max(timeout, MIN_TIMEOUT),
        "created": model.iso_from_ms(now),
        "created_ms": now,
    }
    result = {"InvokeId": invoke_id}

    async def _tx(conn: Conn) -> Any:
        prior = await replay(conn, account, "SendFile", p, result)
        if prior is not None:
            return prior
        found = await store_files.instance_os(conn, account, ids, p.region())
        require_found(ids, found, "InvalidInstance.NotFound", "instance")
        results = [
            {"instance_id": i, "status": store_files.PENDING, "error_code": "", "error_info": ""}
            if found[i] != "windows"
            else {
                "instance_id": i,
                "status": store_files.INVALID,
                "error_code": "FilePathInvalid",
                "error_info": WINDOWS_INFO,
            }
            for i in ids
        ]
        await store_files.insert_send_file(conn, row, results)
        await add_tags(conn, account, "invocation", [invoke_id], tags)
        return result

    answer: dict[str, Any] = await state.store.write(_tx)
    if answer is result:  # a retry of a known ClientToken wakes nobody
        await state.notifier.publish(ids, {"type": "task"})
    return answer


def render_file_instance(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "InstanceId": r["instance_id"],
        "InvocationStatus": r["status"],
        "ErrorCode": r["error_code"],
        "ErrorInfo": r["error_info"],
        "CreationTime": model.iso_from_ms(r["created_ms"]),
        "StartTime": model.iso_from_ms(r["start_ms"]),
        "FinishTime": model.iso_from_ms(r["finish_ms"]),
        "UpdateTime": model.iso_from_ms(r["updated_ms"]),
    }


def render_send_file(
    row: dict[str, Any], results: list[dict[str, Any]], tags: list[tuple[str, str]]
) -> dict[str, Any]:
    """One Invocation of DescribeSendFileResults, with its InvokeInstances."""
    return {
        "InvokeId": row["invoke_id"],
        "Name": row["name"],
        "Description": row["description"],
        "Content": row["content"],
        "ContentType": row["content_type"],
        "TargetDir": row["target_dir"],
        "FileMode": row["file_mode"],
        "FileOwner": row["file_owner"],
        "FileGroup": row["file_group"],
        "Overwrite": bool(row["overwrite"]),
        "CreationTime": row["created"],
        "VmCount": len(results),
        "InvocationStatus": store_files.overall_status([r["status"] for r in results]),
        "InvokeInstances": {"InvokeInstance": [render_file_instance(r) for r in results]},
        "Tags": {"Tag": render_tags(tags)},
    }


@action("DescribeSendFileResults", tags=True)
async def describe_send_file_results(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """File tasks with their overall and per-instance status, newest first."""
    page = p.page()
    wanted = p.enum("InvocationStatus", STATUSES)
    filters = {
        "InvokeId": p.str("InvokeId"),
        "Name": p.str("Name"),
        "InstanceId": p.str("InstanceId"),
        "Tags": read_tags(p),
        "Region": p.region(),
    }
    offset, limit = (0, 10_000) if wanted else (page.offset, page.size)
    now = model.now_ms()

    async def _expire(conn: Conn) -> None:
        await store_files.expire_overdue(conn, now, account=account)

    async def _tx(conn: Conn) -> Any:
        total, rows = await store_files.list_send_files(conn, account, filters, offset, limit)
        ids = [r["invoke_id"] for r in rows]
        results = await store_files.file_results(conn, ids)
        return total, rows, results, await store_tags.tags_of(conn, account, "invocation", ids)

    await state.store.write(_expire, durable=False)
    total, rows, results, tags = await state.store.read(_tx)
    items = [
        render_send_file(r, results.get(r["invoke_id"], []), tags.get(r["invoke_id"], []))
        for r in rows
    ]
    if wanted:
        items = [i for i in items if i["InvocationStatus"] == wanted]
        total = len(items)
        items = items[page.offset : page.offset + page.size]
    return {**page.fields(total), "Invocations": {"Invocation": items}}
