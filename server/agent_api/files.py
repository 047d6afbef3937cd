"""The agent's report of a SendFile task: `POST /luban/api/v1/file/report`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from server import model
from server.agent_api.handlers import (
    ParsedReport,
    apply_one,
    bad,
    field_int,
    field_str,
    not_found_answer,
    parse_json,
)
from server.store import files
from server.store.access import NonceClaim
from server.store.conn import Conn

if TYPE_CHECKING:
    from server.state import AgentIdentity, ServerState

_FILE_ID = re.compile(r"^f-[A-Za-z0-9]{1,60}$")
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.]{0,128}$")


async def file_report(state: ServerState, who: AgentIdentity, body: bytes) -> dict[str, Any]:
    return await apply_one(state, who, parse_file_report(state, parse_json(body)))


def parse_file_report(state: ServerState, data: dict[str, Any]) -> ParsedReport:
    """Success or Failed (with ErrorCode) for one file; the first report wins."""
    invoke_id = field_str(data, "invoke_id", 64, required=True)
    if not _FILE_ID.match(invoke_id):
        raise bad("invoke_id must look like f-…")
    status = field_str(data, "status", 16, required=True)
    if status not in (files.SUCCESS, files.FAILED):
        raise bad("status must be Success or Failed")
    code = field_str(data, "error_code", 128)
    if not _ERROR_CODE.match(code):
        raise bad("error_code is not valid")
    if status == files.FAILED and not code:
        code = "ExecutionException"
    report = {
        "status": status,
        "error_code": code if status == files.FAILED else "",
        "error_info": field_str(data, "error_message", 4096) if status == files.FAILED else "",
        "finish_ms": field_int(data, "end_time", None, nullable=True) or model.now_ms(),
    }

    async def apply(conn: Conn, instance_id: str, _nonce: NonceClaim) -> dict[str, Any]:
        duplicate = await files.record_file_result(conn, instance_id, invoke_id, report)
        if duplicate is None:
            return not_found_answer(invoke_id)
        return {"ok": True, "duplicate": duplicate}

    return ParsedReport(apply, durable=True)
