"""InvokeCommand, RunCommand, DescribeInvocations, DescribeInvocationResults, StopInvocation."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

from server import model
from server.agent_api.handlers import render_task
from server.api import action
from server.api.commands import (
    NAME_TOO_LONG,
    TIMEOUT_OUT_OF_RANGE,
    WORKING_DIR_TOO_LONG,
    command_not_found,
    read_command_fields,
    read_launcher,
)
from server.api.idempotency import client_token, replay
from server.api.instances import require_instances
from server.api.tags import add_tags, read_tags, render_tags, tags_to_set
from server.output_limits import running_tail
from server.rpc import ApiError, Params, invalid, missing
from server.store import queries as q
from server.store import tags as store_tags
from server.store.conn import Conn
from server.store.invocations import modify_invocation

if TYPE_CHECKING:
    from server.state import ServerState

RECORD_STATUS_FILTER = {
    "Running": (model.PENDING, model.SCHEDULED, model.RUNNING),
    "Finished": (model.SUCCESS,),
    "Success": (model.SUCCESS,),
    "Failed": tuple(model.FAILED_LIKE),
    "Stopped": tuple(model.STOPPED_LIKE),
    "Stopping": (model.STOPPING,),
    "Pending": (model.PENDING,),
    "Scheduled": (model.SCHEDULED,),
    "Timeout": (model.TIMEOUT,),
    "Error": (model.ERROR,),
    "Invalid": (model.INVALID,),
    "Aborted": (model.ABORTED,),
    "Cancelled": (model.CANCELLED,),
    "Terminated": (model.TERMINATED,),
}


TOO_MANY_INSTANCES = ("InstanceIds.ExceedLimit", 403)
TERMINATION_MODES = ("Process", "ProcessTree")
UNKNOWN_TERMINATION_MODE = ("InvalidTerminationMode.NotFound", 404)


def invoke_not_found() -> ApiError:
    return ApiError("InvalidInvokeId.NotFound", "The specified invoke ID does not exist.", 404)


def read_schedule(p: Params) -> tuple[bool, str, str]:
    """Timed, RepeatMode and Frequency, checked together."""
    timed = p.bool("Timed", False)
    mode = p.enum("RepeatMode", model.REPEAT_MODES, "", ("InvalidRepeatMode.NotFound", 404))
    if not mode:
        mode = "Period" if timed else "Once"
    frequency = p.str("Frequency", max_len=256)
    if mode == "Period":
        if not frequency:
            raise missing("Frequency", "MissingParam.Frequency")
        frequency = model.validate_frequency(frequency)
    elif frequency and mode == "Once":
        frequency = ""
    return mode != "Once", mode, frequency


async def start_invocation(
    state: ServerState,
    account: str,
    p: Params,
    command: dict[str, Any],
    keep: bool,
    action_name: str,
) -> dict[str, Any]:
    """Validate targets and parameters, store the invocation (once per ClientToken), wake the
    agents; return the action's answer."""
    client_token(p)
    tags = tags_to_set(p)
    ids = p.list("InstanceId", max_items=state.max_invoke_instances, too_many=TOO_MANY_INSTANCES)
    if not ids:
        raise missing("InstanceId.1", "MissingParam.InstanceId")
    timed, mode, frequency = read_schedule(p)
    names = json.loads(command["parameter_names"]) if command["enable_parameter"] else []
    values = model.parse_parameters(p.str("Parameters", max_len=64 * 1024))
    if values and not command["enable_parameter"]:
        raise ApiError("Parameter.Disabled", "The command does not take custom parameters.")
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ApiError(
            "Parameter.NotMatched",
            f"The command has no custom parameter(s) {', '.join(unknown)}.",
            403,
        )
    content = model.substitute(command["content"], names, values) if names else command["content"]
    timeout = p.int("Timeout", command["timeout"], 1, model.MAX_TIMEOUT, TIMEOUT_OUT_OF_RANGE)
    working_dir = (
        p.str("WorkingDir", max_len=200, too_long=WORKING_DIR_TOO_LONG) or command["working_dir"]
    )
    username = p.str("Username", max_len=255, too_long=("Username.ExceedLimit", 403))
    termination = p.enum("TerminationMode", TERMINATION_MODES, "Process", UNKNOWN_TERMINATION_MODE)
    invoke_id = model.new_id("t-")
    now = model.now_ms()
    row = {
        "invoke_id": invoke_id,
        "account": account,
        "command_id": command["command_id"],
        "command_name": command["name"],
        "command_type": command["type"],
        "command_description": command["description"],
        "content": content,
        "parameters": json.dumps(values),
        "timed": timed,
        "repeat_mode": mode,
        "frequency": frequency,
        "username": username,
        "working_dir": working_dir,
        "timeout": timeout,
        "created": model.iso_from_ms(now),
        "created_ms": now,
        "revision": 1,
        "stopped": False,
        "template": command["content"] if command["enable_parameter"] else "",
        "region_id": p.region(),
        "launcher": read_launcher(p) or command["launcher"],
        "termination_mode": termination,
    }

    result = {"InvokeId": invoke_id}
    if action_name == "RunCommand":
        result = {"CommandId": command["command_id"], **result}

    # The polls parked here get the kick with the task: their rows are marked delivered in
    # this very transaction, so a later StopInvocation finds them delivered (Stopping, told
    # to the agent), as when each poll claims its task on waking, one flush later (docs/scale.md)
    parked = state.notifier.parked(ids)

    async def _tx(conn: Conn) -> Any:
        prior = await replay(conn, account, action_name, p, result)
        if prior is not None:
            return prior
        await require_instances(conn, account, ids, p.region())
        if keep:
            await q.insert_command(conn, command)
            await add_tags(conn, account, "command", [command["command_id"]], tags)
        await q.insert_invocation(conn, row, ids, delivered=parked)
        await add_tags(conn, account, "invocation", [invoke_id], tags)
        return result

    # The request's nonce goes in this transaction: one database step fewer (server/api).
    # Keyed by the invocation, concurrent calls spread over PostgreSQL's writer lanes instead
    # of queueing in one (docs/scale.md, Fan-out).
    if p.nonce is not None:
        answer: dict[str, Any] = await p.nonce.write(state.store, _tx, key=invoke_id)
    else:
        answer = await state.store.write(_tx, key=invoke_id)
    if answer is result:  # a retry of a known ClientToken wakes nobody
        # the kick carries the task: a woken agent needs no task list (docs/scale.md, Fan-out)
        event = {"type": "task", "tasks": [render_task(row)]}
        await state.notifier.publish(ids, event, claimed=parked)
    return answer


@action("InvokeCommand", tags=True, own_nonce=True)
async def invoke_command(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """Run a stored command on instances, once or on a schedule."""
    command_id = p.str("CommandId", required=True)

    async def _tx(conn: Conn) -> Any:
        command = await q.get_command(conn, account, command_id, p.region())
        return command

    command = await state.store.read(_tx, small=True)
    if command is None:
        raise command_not_found()
    return await start_invocation(state, account, p, command, False, "InvokeCommand")


@action("RunCommand", tags=True, own_nonce=True)
async def run_command(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """Create a command and invoke it in one call."""
    fields = read_command_fields(p, content_required=True)
    now = model.now_ms()
    command = {
        "command_id": model.new_id("c-"),
        "account": account,
        "name": p.str("Name", max_len=128, too_long=NAME_TOO_LONG) or f"command-{now}",
        **fields,
        "created": model.iso_from_ms(now),
        "created_ms": now,
        "invoke_times": 0,
        "region_id": p.region(),
    }
    keep = p.bool("KeepCommand", False)
    return await start_invocation(state, account, p, command, keep, "RunCommand")


def encode_output(raw_b64: str, encoding: str) -> str:
    """Output as the caller asked: Base64 (default) or PlainText."""
    if encoding == "PlainText":
        return base64.b64decode(raw_b64 or "").decode("utf-8", "replace")
    return raw_b64 or ""


async def output_of(conn: Any, row: dict[str, Any], quota: int) -> str:
    """Base64 output of a result row; a running execution shows what it streamed so far."""
    if row["status"] == model.RUNNING and row["execution_id"] and not row["output"]:
        data, _ = await q.running_output(conn, row)
        return base64.b64encode(running_tail(data, quota)).decode("ascii")
    return str(row["output"] or "")


def render_result(row: dict[str, Any], output: str, tags: list[tuple[str, str]]) -> dict[str, Any]:
    """One InvocationResult / ResultItem."""
    return {
        "CommandId": row["command_id"],
        "InvokeId": row["invoke_id"],
        "InstanceId": row["instance_id"],
        "InvocationStatus": row["status"],
        "InvokeRecordStatus": model.record_status(row["status"]),
        "ExitCode": row["exit_code"] if row["exit_code"] is not None else 0,
        "Output": output,
        "Dropped": row["dropped"],
        "ErrorCode": row["error_code"],
        "ErrorInfo": row["error_info"],
        "StartTime": model.iso_from_ms(row["start_ms"]),
        "FinishedTime": model.iso_from_ms(row["finish_ms"]),
        "StopTime": model.iso_from_ms(row["stop_ms"]),
        "Repeats": row["repeats"],
        "Username": row["username"],
        "ContainerId": "",
        "ContainerName": "",
        "Launcher": row["launcher"],
        "TerminationMode": row["termination_mode"],
        "Tags": {"Tag": render_tags(tags)},
    }


@action("DescribeInvocationResults", tags=True)
async def describe_invocation_results(
    state: ServerState, account: str, p: Params
) -> dict[str, Any]:
    """Per-instance results, in both the current and the legacy response shape."""
    page = p.page()
    encoding = p.enum("ContentEncoding", ("Base64", "PlainText"), "Base64")
    record = p.str("InvokeRecordStatus")
    if record and record not in RECORD_STATUS_FILTER:
        raise invalid("InvokeRecordStatus")
    invoke_id = p.str("InvokeId")
    filters: dict[str, Any] = {
        "InvokeId": invoke_id,
        "InstanceId": p.str("InstanceId"),
        "CommandId": p.str("CommandId"),
        "Statuses": RECORD_STATUS_FILTER.get(record, ()),
        "Tags": read_tags(p),
        "Region": p.region(),
    }
    # IncludeHistory: every execution (a timed invocation runs many times), not only the latest
    lister = q.list_execution_results if p.bool("IncludeHistory", False) else q.list_results

    async def _tx(conn: Conn) -> Any:
        if invoke_id and await q.get_invocation(conn, account, invoke_id, p.region()) is None:
            raise invoke_not_found()
        total, rows = await lister(conn, account, filters, page.offset, page.size)
        ids = sorted({r["invoke_id"] for r in rows})
        tags = await store_tags.tags_of(conn, account, "invocation", ids)
        items = [
            render_result(
                r,
                encode_output(await output_of(conn, r, state.settings.output_quota), encoding),
                tags.get(r["invoke_id"], []),
            )
            for r in rows
        ]
        return total, rows, items

    total, rows, items = await state.store.read(_tx)
    return {
        "Invocation": {
            **page.fields(total),
            "InvocationResults": {"InvocationResult": items},
            "ResultLists": {"ResultItem": items},
        }
    }


def render_invocation(
    row: dict[str, Any],
    results: list[dict[str, Any]],
    encoding: str,
    with_output: bool,
    tags: list[tuple[str, str]],
) -> dict[str, Any]:
    """One Invocation of DescribeInvocations, with its InvokeInstances."""
    overall = model.overall_status(r["status"] for r in results)
    content = row["content"]
    if encoding == "PlainText":
        content = base64.b64decode(content).decode("utf-8", "replace")
    instances = []
    for r in results:
        item = {
            "InstanceId": r["instance_id"],
            "InvocationStatus": r["status"],
            "InstanceInvokeStatus": model.record_status(r["status"]),
            "ExitCode": r["exit_code"] if r["exit_code"] is not None else 0,
            "Dropped": r["dropped"],
            "ErrorCode": r["error_code"],
            "ErrorInfo": r["error_info"],
            "StartTime": model.iso_from_ms(r["start_ms"]),
            "FinishTime": model.iso_from_ms(r["finish_ms"]),
            "StopTime": model.iso_from_ms(r["stop_ms"]),
            "Repeats": r["repeats"],
            "CreationTime": model.iso_from_ms(r["created_ms"]),
            "UpdateTime": model.iso_from_ms(r["updated_ms"]),
            "Timed": bool(row["timed"]),
            "Output": encode_output(r["output"], encoding) if with_output else "",
        }
        instances.append(item)
    return {
        "InvokeId": row["invoke_id"],
        "CommandId": row["command_id"],
        "CommandName": row["command_name"],
        "CommandType": row["command_type"],
        "CommandDescription": row["command_description"],
        "CommandContent": content,
        "Parameters": row["parameters"],
        "Timed": bool(row["timed"]),
        "RepeatMode": row["repeat_mode"],
        "Frequency": row["frequency"],
        "Username": row["username"],
        "Timeout": row["timeout"],
        "WorkingDir": row["working_dir"],
        "Launcher": row["launcher"],
        "TerminationMode": row["termination_mode"],
        "ContainerId": "",
        "ContainerName": "",
        "CreationTime": row["created"],
        "InvocationStatus": overall,
        "InvokeStatus": model.legacy_invoke_status(overall, bool(row["timed"])),
        "InvokeInstances": {"InvokeInstance": instances},
        "Tags": {"Tag": render_tags(tags)},
    }


@action("DescribeInvocations", tags=True)
async def describe_invocations(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """Invocations with their overall and per-instance status, newest first."""
    page = p.page()
    encoding = p.enum("ContentEncoding", ("Base64", "PlainText"), "Base64")
    with_output = p.bool("IncludeOutput", False)
    wanted = p.enum(
        "InvokeStatus",
        (
            "Running",
            "Finished",
            "Failed",
            "PartialFailed",
            "Stopped",
            "Stopping",
            "Pending",
            "Scheduled",
            "Success",
        ),
    )
    filters: dict[str, Any] = {
        k: p.str(k) for k in ("InvokeId", "CommandId", "CommandName", "InstanceId")
    }
    filters["CommandType"] = p.str("CommandType") or p.str("Type")
    filters["RepeatMode"] = p.enum("RepeatMode", model.REPEAT_MODES)
    filters["Timed"] = p.bool("Timed") if p.raw.get("Timed") else None
    filters["Tags"] = read_tags(p)
    filters["Region"] = p.region()
    offset, limit = page.offset, page.size
    if wanted:
        offset, limit = 0, 10_000

    async def _tx(conn: Conn) -> Any:
        total, rows = await q.list_invocations(conn, account, filters, offset, limit)
        ids = [r["invoke_id"] for r in rows]
        results = await q.instance_results(conn, ids)
        return total, rows, results, await store_tags.tags_of(conn, account, "invocation", ids)

    total, rows, results, tags = await state.store.read(_tx)
    items = [
        render_invocation(
            r, results.get(r["invoke_id"], []), encoding, with_output, tags.get(r["invoke_id"], [])
        )
        for r in rows
    ]
    if wanted:
        items = [i for i in items if wanted in (i["InvokeStatus"], i["InvocationStatus"])]
        total = len(items)
        items = items[page.offset : page.offset + page.size]
    return {
        **page.fields(total),
        "Invocations": {"Invocation": items},
    }


def invocation_not_modifiable(detail: str) -> ApiError:
    return ApiError(
        "InvalidInvocation.NotModifiable", f"The invocation cannot be modified: {detail}"
    )


def modified_values(p: Params, row: dict[str, Any]) -> dict[str, Any]:
    """The invocation columns ModifyInvocationAttribute changes (content, parameters,
    frequency), checked against the invocation as it is."""
    values: dict[str, Any] = {}
    if p.raw.get("Frequency"):
        if row["repeat_mode"] != "Period":
            raise invalid("Frequency", "Only a Period invocation has a frequency.")
        values["frequency"] = model.validate_frequency(p.str("Frequency", max_len=256))
    new_content = p.raw.get("CommandContent", "")
    new_params = p.raw.get("Parameters", "")
    if not new_content and not new_params:
        return values
    encoding = "PlainText" if p.raw.get("ContentEncoding", "").lower() == "plaintext" else "Base64"
    # the script before substitution: an invocation without parameters keeps it as content
    before = row["template"] or row["content"]
    template = model.decode_content(new_content, encoding) if new_content else before
    enabled = bool(row["template"]) or p.bool("EnableParameter", False)
    old = json.loads(row["parameters"])
    parameters = model.parse_parameters(new_params) if new_params else old
    names = model.parameter_names(template) if enabled else []
    if parameters and not enabled:
        raise ApiError("Parameter.Disabled", "The command does not take custom parameters.")
    unknown = sorted(set(parameters) - set(names))
    if unknown:
        raise ApiError(
            "Parameter.NotMatched",
            f"The command has no custom parameter(s) {', '.join(unknown)}.",
            403,
        )
    values["content"] = model.substitute(template, names, parameters) if names else template
    values["template"] = template if enabled else ""
    values["parameters"] = json.dumps(parameters)
    return values


@action("ModifyInvocationAttribute")
async def modify_invocation_attribute(
    state: ServerState, account: str, p: Params
) -> dict[str, Any]:
    """Change a running timed invocation's content, parameters or frequency in place: its
    agents reschedule the new revision."""
    invoke_id = p.str("InvokeId", required=True)
    if not any(p.raw.get(k) for k in ("CommandContent", "Parameters", "Frequency")):
        raise missing("CommandContent")
    refused = [k for k in ("InstanceId.1", "InstanceIds") if p.raw.get(k)]
    if refused:
        raise invalid(refused[0], "Adding instances to an invocation is not supported here.")

    async def _tx(conn: Conn) -> Any:
        row = await q.get_invocation(conn, account, invoke_id, p.region())
        if row is None:
            raise invoke_not_found()
        if not row["timed"]:
            raise invocation_not_modifiable("only a timed invocation can be changed.")
        if row["stopped"]:
            raise invocation_not_modifiable("it was stopped.")
        values = modified_values(p, row)
        return await modify_invocation(conn, invoke_id, values)

    notify = await state.store.write(_tx)
    if notify:
        await state.notifier.publish(notify, {"type": "task"})
    return {}


@action("StopInvocation")
async def stop_invocation(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """Stop an invocation on all or some of its instances."""
    invoke_id = p.str("InvokeId", required=True)
    ids = p.list("InstanceId", too_many=TOO_MANY_INSTANCES)

    async def _tx(conn: Conn) -> Any:
        if await q.get_invocation(conn, account, invoke_id, p.region()) is None:
            raise invoke_not_found()
        notify = await q.stop_invocation(conn, invoke_id, ids or None)
        return notify

    notify = await state.store.write(_tx)
    if notify:
        await state.notifier.publish(notify, {"type": "stop"})
    return {}
