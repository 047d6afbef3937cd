"""What the agent does with answers it refused, and how an old agent learns the server key.

A refused task list runs nothing. The invocations it named are reported failed with the refusal's
error code, through the outbox, so the operator sees it in DescribeInvocationResults once a good
connection delivers the report (docs/agent-protocol.md, Signed responses).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from agent.client import AgentClient, ServerUnavailableError
from agent.servertrust import ServerTrust, parse_server_key, save_server_trust
from common.errors import UsageError
from common.protocol import ResponseRefusedError

log = logging.getLogger(__name__)

_INVOKE_ID = re.compile(r"^t-[A-Za-z0-9]{1,60}$")
_FILE_ID = re.compile(r"^f-[A-Za-z0-9]{1,60}$")


def _named(body: bytes, key: str, pattern: re.Pattern[str]) -> list[str]:
    """Ids matching `pattern` of the one-shot entries under `key` of a refused task list
    (content is never looked at)."""
    try:
        listing = json.loads(body)
    except (ValueError, RecursionError):
        return []
    entries = listing.get(key) if isinstance(listing, dict) else None
    found: list[str] = []
    for task in entries if isinstance(entries, list) else []:
        if not isinstance(task, dict) or task.get("timed"):
            continue
        if task.get("repeat_mode", "Once") != "Once":
            continue
        invoke_id = task.get("invoke_id")
        if isinstance(invoke_id, str) and pattern.match(invoke_id) and invoke_id not in found:
            found.append(invoke_id)
    return found


def refused_invocations(body: bytes) -> list[str]:
    """One-shot invoke ids (t-…) named in a refused task list."""
    return _named(body, "run", _INVOKE_ID)


def refused_files(body: bytes) -> list[str]:
    """File task ids (f-…) named in a refused task list."""
    return _named(body, "files", _FILE_ID)


def refusal_message(exc: ResponseRefusedError) -> str:
    """The error message reported for an invocation whose task list was refused."""
    return (
        f"the agent refused the task list ({exc.code}): it was not signed by this instance's"
        " control plane for this request; nothing was run. Check proxies and load balancers"
        " between agent and server"
    )


def trust_on_first_use(client: AgentClient, state_dir: Path) -> ServerTrust:
    """Pin the server's current key for an agent registered before signed responses.

    Weaker than registration: the key comes over the signed-request channel unauthenticated,
    so an attacker on the path at this one moment could pin his own. Pin out of band instead
    with `assist-agent trust-server-key KEY` (docs/SECURITY.md).
    """
    chain = client.server_keys()
    if not chain:
        raise ServerUnavailableError(f"{client.server} has no control-plane key to pin")
    try:
        newest = parse_server_key(chain[-1][0])
    except UsageError as exc:
        raise ServerUnavailableError(f"{client.server} sent a malformed key: {exc}") from exc
    trust = ServerTrust([newest], "first-use", state_dir)
    save_server_trust(state_dir, trust)
    log.warning(
        "no control-plane key was pinned (agent registered before signed answers): trusting %s"
        " on first use; pin it out of band with `assist-agent trust-server-key`",
        newest,
    )
    return trust
