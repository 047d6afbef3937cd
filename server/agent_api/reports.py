"""Several queued reports in one request: `POST /luban/api/v1/task/reports`.

An agent whose outbox holds more than one due report (tasks that ended together, a backlog after
an outage) sends them as one signed request instead of one each: one signature check, one nonce
and one transaction for all of them (docs/agent-protocol.md, Reports). Each item is what the
agent would have sent on its own, the endpoint's path and its body, and gets the answer that
request would have had, in order. An item that is malformed or names an unknown task gets its
own error answer; the others are applied all the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from server.agent_api.auth import AgentError
from server.agent_api.files import parse_file_report
from server.agent_api.handlers import (
    ParsedReport,
    apply_reports,
    bad,
    error_answer,
    parse_json,
    parse_running,
    parse_terminal,
)
from server.lifecycle import TERMINAL_KINDS

if TYPE_CHECKING:
    from server.state import AgentIdentity, ServerState

MAX_REPORTS = 100  # items in one request (its body is bounded by MAX_AGENT_BODY as well)

Parser = Callable[["ServerState", dict[str, Any]], ParsedReport]


def _terminal(kind: str) -> Parser:
    def parse(state: ServerState, data: dict[str, Any]) -> ParsedReport:
        return parse_terminal(state, kind, data)

    return parse


# the agent API paths (under /luban/api) whose reports may travel in a batch
PARSERS: dict[str, Parser] = {
    "/v1/task/running": parse_running,
    "/v1/file/report": parse_file_report,
    **{f"/v1/task/{kind}": _terminal(kind) for kind in TERMINAL_KINDS},
}


def parse_item(state: ServerState, item: Any) -> ParsedReport:
    """One batch item, `{"path": "/v1/task/finish", "body": {…}}`, checked."""
    if not isinstance(item, dict):
        raise bad("each report must be an object with path and body")
    path = item.get("path")
    parser = PARSERS.get(path) if isinstance(path, str) else None
    if parser is None:
        raise bad(f"path must be one of {', '.join(sorted(PARSERS))}")
    body = item.get("body")
    if not isinstance(body, dict):
        raise bad("body must be a JSON object")
    return parser(state, body)


def refused(error: AgentError) -> ParsedReport:
    """An item refused before the transaction: applying it only gives its error answer."""
    answer = error_answer(error)

    async def apply(*_: Any) -> dict[str, Any]:
        return answer

    return ParsedReport(apply, durable=False)


async def task_reports(state: ServerState, who: AgentIdentity, body: bytes) -> dict[str, Any]:
    """Apply up to MAX_REPORTS reports in order; answer each in `results`."""
    items = parse_json(body).get("reports")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_REPORTS:
        raise bad(f"reports must be a list of 1 to {MAX_REPORTS} reports")
    parsed: list[ParsedReport] = []
    for item in items:
        try:
            parsed.append(parse_item(state, item))
        except AgentError as exc:
            parsed.append(refused(exc))
    return {"results": await apply_reports(state, who, parsed)}
