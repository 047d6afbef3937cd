"""CreateCommand, DescribeCommands, ModifyCommand, DeleteCommand."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

from server import model
from server.api import action
from server.api.idempotency import client_token, replay
from server.api.tags import add_tags, read_tags, render_tags, tags_to_set
from server.rpc import ApiError, Params, missing
from server.store import queries as q
from server.store import tags as store_tags
from server.store.conn import Conn

if TYPE_CHECKING:
    from server.state import ServerState


# the real API's codes for the command fields (CreateCommand/ModifyCommand error tables)
NAME_TOO_LONG = ("CmdName.ExceedLimit", 403)
DESCRIPTION_TOO_LONG = ("CmdDesc.ExceedLimit", 403)
WORKING_DIR_TOO_LONG = ("InvalidParameter.WorkingDir", 400)
TIMEOUT_OUT_OF_RANGE = ("InvalidTimeout.ExceedLimit", 403)
LAUNCHER_TOO_LONG = ("InvalidLauncher.LengthLimitExceeded", 403)
MAX_LAUNCHER = 1024  # "cannot exceed 1 KB"


def read_launcher(p: Params) -> str:
    """Launcher: the command line the script runs under (the agent appends the script's path,
    or puts it where {{ACS::ScriptFileName}} stands)."""
    return p.str("Launcher", max_len=MAX_LAUNCHER, too_long=LAUNCHER_TOO_LONG)


def command_not_found() -> ApiError:
    return ApiError("InvalidCmdId.NotFound", "The specified command ID does not exist.", 404)


def command_type(p: Params, required: bool) -> str:
    """Type: RunShellScript, RunBatScript or RunPowerShellScript."""
    ctype = p.str("Type", required=required)
    if ctype and ctype not in model.COMMAND_TYPES:
        raise ApiError("InvalidCmdType.NotFound", "The specified command type does not exist.", 404)
    return ctype


def read_command_fields(p: Params, content_required: bool) -> dict[str, Any]:
    """Validate the fields CreateCommand and RunCommand share."""
    # as the real API: an unknown ContentEncoding means Base64
    encoding = "PlainText" if p.raw.get("ContentEncoding", "").lower() == "plaintext" else "Base64"
    raw = p.raw.get("CommandContent", "")
    if raw == "":
        if content_required:
            raise missing("CommandContent")
        content = ""
    else:
        content = model.decode_content(raw, encoding)
    ctype = command_type(p, required=True)
    enable = p.bool("EnableParameter", False)
    names = model.parameter_names(content) if enable and content else []
    return {
        "type": ctype,
        "content": content,
        "working_dir": p.str("WorkingDir", max_len=200, too_long=WORKING_DIR_TOO_LONG),
        "timeout": p.int(
            "Timeout", model.DEFAULT_TIMEOUT, 1, model.MAX_TIMEOUT, TIMEOUT_OUT_OF_RANGE
        ),
        "enable_parameter": enable,
        "parameter_names": json.dumps(names),
        "description": p.str("Description", max_len=512, too_long=DESCRIPTION_TOO_LONG),
        "launcher": read_launcher(p),
    }


async def store_command(
    state: ServerState, account: str, name: str, fields: dict[str, Any], p: Params
) -> dict[str, Any]:
    """Insert a command (once per ClientToken); return the CreateCommand answer."""
    command_id = model.new_id("c-")
    now = model.now_ms()
    row = {
        "command_id": command_id,
        "account": account,
        "name": name,
        **fields,
        "created": model.iso_from_ms(now),
        "created_ms": now,
        "invoke_times": 0,
        "region_id": p.region(),
    }
    result = {"CommandId": command_id}

    async def _tx(conn: Conn) -> dict[str, Any]:
        prior = await replay(conn, account, "CreateCommand", p, result)
        if prior is not None:
            return prior
        await q.insert_command(conn, row)
        await add_tags(conn, account, "command", [command_id], tags_to_set(p))
        return result

    return await state.store.write(_tx)


@action("CreateCommand", tags=True)
async def create_command(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """Store a script for later invocations."""
    client_token(p)
    tags_to_set(p)
    name = p.str("Name", required=True, max_len=128, too_long=NAME_TOO_LONG)
    fields = read_command_fields(p, content_required=True)
    return await store_command(state, account, name, fields, p)


def render_command(
    row: dict[str, Any], encoding: str, tags: list[tuple[str, str]]
) -> dict[str, Any]:
    """A Command item of DescribeCommands."""
    content = row["content"]
    if encoding == "PlainText":
        content = base64.b64decode(content).decode("utf-8", "replace")
    return {
        "CommandId": row["command_id"],
        "Name": row["name"],
        "Type": row["type"],
        "Description": row["description"],
        "CommandContent": content,
        "WorkingDir": row["working_dir"],
        "Timeout": row["timeout"],
        "CreationTime": row["created"],
        "EnableParameter": bool(row["enable_parameter"]),
        "ParameterNames": {"ParameterName": json.loads(row["parameter_names"])},
        "ParameterDefinitions": {
            "ParameterDefinition": [
                {
                    "ParameterName": name,
                    "Required": True,
                    "Description": "",
                    "DefaultValue": "",
                    "PatternRegex": "",
                    "PossibleValues": {"PossibleValue": []},
                }
                for name in json.loads(row["parameter_names"])
            ]
        },
        "Launcher": row["launcher"],
        "InvokeTimes": row["invoke_times"],
        "Provider": "",
        "Version": 1,
        "Latest": True,
        "Category": "",
        "Tags": {"Tag": render_tags(tags)},
    }


@action("DescribeCommands", tags=True)
async def describe_commands(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """List the account's commands, newest first."""
    page = p.page()
    encoding = p.enum("ContentEncoding", ("Base64", "PlainText"), "Base64")
    ctype = p.str("Type")
    if ctype and ctype not in model.COMMAND_TYPES:
        raise ApiError(
            "InvalidCommandType.NotFound", "The specified command type does not exist.", 404
        )
    filters: dict[str, Any] = {k: p.str(k) for k in ("CommandId", "Name", "Description")}
    filters["Type"] = ctype
    filters["Region"] = p.region()
    filters["Tags"] = read_tags(p)

    async def _tx(conn: Conn) -> Any:
        total, rows = await q.list_commands(conn, account, filters, page.offset, page.size)
        ids = [r["command_id"] for r in rows]
        return total, rows, await store_tags.tags_of(conn, account, "command", ids)

    total, rows, tags = await state.store.read(_tx)
    return {
        **page.fields(total),
        "Commands": {
            "Command": [render_command(r, encoding, tags.get(r["command_id"], [])) for r in rows]
        },
    }


@action("ModifyCommand")
async def modify_command(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """Change a command's name, description, working dir, timeout, content or launcher."""
    command_id = p.str("CommandId", required=True)
    values: dict[str, Any] = {}
    if p.raw.get("Name"):
        values["name"] = p.str("Name", max_len=128, too_long=NAME_TOO_LONG)
    if "Description" in p.raw:
        values["description"] = p.str("Description", max_len=512, too_long=DESCRIPTION_TOO_LONG)
    if "WorkingDir" in p.raw:
        values["working_dir"] = p.str("WorkingDir", max_len=200, too_long=WORKING_DIR_TOO_LONG)
    if p.raw.get("Timeout"):
        values["timeout"] = p.int("Timeout", None, 1, model.MAX_TIMEOUT, TIMEOUT_OUT_OF_RANGE)
    if p.raw.get("CommandContent"):
        values["content"] = model.decode_content(p.raw["CommandContent"])
    if "Launcher" in p.raw:
        values["launcher"] = read_launcher(p)

    async def _tx(conn: Conn) -> Any:
        row = await q.get_command(conn, account, command_id, p.region())
        if row is None:
            raise command_not_found()
        if "content" in values and row["enable_parameter"]:
            values["parameter_names"] = json.dumps(model.parameter_names(values["content"]))
        if values:
            await q.update_command(conn, account, command_id, values)

    await state.store.write(_tx)
    return {}


@action("DeleteCommand")
async def delete_command(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """Delete a command (its invocations keep their own copy)."""
    command_id = p.str("CommandId", required=True)

    async def _tx(conn: Conn) -> Any:
        if await q.get_command(conn, account, command_id, p.region()) is None:
            raise command_not_found()
        if not await q.delete_command(conn, account, command_id):
            raise command_not_found()
        await store_tags.remove_tags(conn, account, "command", [command_id], None)

    await state.store.write(_tx)
    return {}
