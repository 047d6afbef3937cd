"""Signed answers to agents: every agent API response carries the control plane's signature.

The canonical form and headers are common/protocol.py (docs/agent-protocol.md, Signed responses).
The active key lives in the database (server/store/serverkeys.py); each replica re-reads it
every KEY_REFRESH seconds, so a rotation reaches every replica without a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from common.protocol import (
    HEADER_INSTANCE,
    HEADER_NONCE,
    MAX_NONCE,
    audience_tag,
    sign_kick,
)
from common.sessions import HEADER_SESSION, mac_response
from server import overload
from server.agent_api.auth import AgentError
from server.store import Store, serverkeys
from server.store.serverkeys import ServerKey

if TYPE_CHECKING:
    from server.state import ServerState

log = logging.getLogger(__name__)

KEY_REFRESH = 30.0  # seconds a replica signs with a cached key before re-reading the active one


class SigningKeys:
    """The active control-plane key of one replica, re-read now and then."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._key: ServerKey | None = None
        self._loaded = 0.0
        self._lock = asyncio.Lock()

    async def current(self) -> ServerKey:
        """The key to sign with (created if an old database has none yet)."""
        if self._key is not None and time.monotonic() - self._loaded < KEY_REFRESH:
            return self._key
        async with self._lock:
            if self._key is None or time.monotonic() - self._loaded >= KEY_REFRESH:
                try:
                    self._key = await self.store.write(serverkeys.ensure_key)
                except Exception:
                    if self._key is None:
                        raise
                    log.warning("cannot re-read the signing key; signing with the cached one")
                self._loaded = time.monotonic()
        return self._key

    async def chain(self) -> list[tuple[str, str]]:
        """Every key, oldest first, with its endorsement (for agents following a rotation)."""
        return await self.store.read(serverkeys.key_chain)


def target(scope: Scope) -> tuple[str, str]:
    """The request's path and raw query, as `request.url` gives them (what the agent signed),
    without building a URL; a query that is not UTF-8 does not raise (its signature fails)."""
    path: str = scope["path"]
    query: str = scope.get("query_string", b"").decode("utf-8", "replace")  # a bad byte: 401
    path = path.replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")  # as URL escapes
    return path, query.split("#", 1)[0]


def dumps(value: Any) -> bytes:
    """Compact JSON, the bytes that are signed and sent."""
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


async def signed_json(
    state: ServerState,
    key: ServerKey,
    request_headers: Mapping[str, str],
    path: str,
    payload: Any,
    status: int = 200,
) -> Response:
    """A JSON answer signed for the instance and nonce the request named (if it named them):
    with the HMAC of the session the request came in, if this replica opened its ticket, else
    with the control plane's Ed25519 key on the crypto thread (server/agent_api/crypto.py)."""
    body = dumps(payload)
    headers: dict[str, str] = {}
    instance_id = request_headers.get(HEADER_INSTANCE) or ""
    nonce = request_headers.get(HEADER_NONCE) or ""
    if _header_safe(instance_id, 64) and _header_safe(nonce, MAX_NONCE):
        ticket = request_headers.get(HEADER_SESSION)
        session = state.tickets.known(ticket, instance_id) if ticket else None
        if session is not None:
            headers = mac_response(session, instance_id, nonce, path, status, body)
        else:
            headers = await state.crypto.sign_response(
                key.private_key, instance_id, nonce, path, status, body, public_b64=key.public_b64
            )
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _header_safe(value: str, limit: int) -> bool:
    """A non-empty printable ASCII value that may be echoed in a response header."""
    return 0 < len(value) <= limit and value.isascii() and value.isprintable()


def agent_error(exc: AgentError) -> JSONResponse:
    """An unsigned error answer (registration: the agent has no pinned key yet)."""
    return JSONResponse({"code": exc.code, "message": exc.message}, status_code=exc.status)


async def agent_answer(
    state: ServerState, request: Request, work: Awaitable[dict[str, Any]]
) -> Response:
    """Run an agent handler and sign its answer, error or not (docs/agent-protocol.md)."""
    payload, status, headers = await outcome(target(request.scope)[0], work)
    return await signed_answer(state, request, payload, status, headers)


async def outcome(
    path: str, work: Awaitable[dict[str, Any]]
) -> tuple[dict[str, Any], int, dict[str, str]]:
    """An agent handler's answer, status and extra headers: its error if it raised one."""
    try:
        return await work, 200, {}
    except AgentError as exc:
        return {"code": exc.code, "message": exc.message}, exc.status, {}
    except Exception as exc:
        failed = overload.failure(exc, f"agent request {path}", "server error")
        return {"code": failed.code, "message": failed.message}, failed.status, failed.headers


async def signed_answer(
    state: ServerState, request: Request, payload: Any, status: int, headers: dict[str, str]
) -> Response:
    """The answer signed for the request's instance and nonce, with extra headers."""
    key = await state.signing.current()
    path = target(request.scope)[0]
    response = await signed_json(state, key, request.headers, path, payload, status)
    response.headers.update(headers)
    return response


def shared_kick(
    key: ServerKey, path: str, event: Any, audience: Sequence[str]
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """One long-poll answer for every instance a kick woke, signed once: the event, a fresh
    kick id and the audience (docs/agent-protocol.md, Shared kicks). Body and raw headers."""
    kick = {"id": uuid.uuid4().hex, "audience": [audience_tag(i) for i in audience]}
    body = dumps({"events": [event], "heartbeat": True, "kick": kick})
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    signed = sign_kick(key.private_key, path, body, key.public_b64)
    headers += [(k.lower().encode("ascii"), v.encode("ascii")) for k, v in signed.items()]
    return body, headers
