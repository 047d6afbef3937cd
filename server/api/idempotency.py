"""ClientToken: a retried create-type call returns the first call's answer and does nothing
again; the same token with other parameters is refused (docs/operator-api.md)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from server import model
from server.rpc import ApiError, Params, invalid
from server.store.conn import Conn
from server.store.idempotency import claim_token

TOKEN_WINDOW_MS = 24 * 3600 * 1000  # how long a ClientToken is remembered
MAX_TOKEN = 64  # characters, ASCII, as the real API
# Parameters of the request's envelope (signature, format), not of what it asks for.
ENVELOPE = frozenset(
    {
        "Action",
        "Version",
        "Format",
        "AccessKeyId",
        "Signature",
        "SignatureMethod",
        "SignatureVersion",
        "SignatureNonce",
        "SignatureType",
        "Timestamp",
        "SecurityToken",
        "ClientToken",
    }
)


def client_token(p: Params) -> str:
    """The ClientToken parameter: up to 64 printable ASCII characters, '' when absent."""
    token = p.str("ClientToken", max_len=MAX_TOKEN)
    if token and not all(" " <= c <= "~" for c in token):
        raise invalid("ClientToken", "It must be printable ASCII.")
    return token


def fingerprint(p: Params) -> str:
    """SHA-256 of the business parameters, so a token's retries can be compared with it."""
    business = sorted((k, v) for k, v in p.raw.items() if k not in ENVELOPE)
    return hashlib.sha256(json.dumps(business).encode()).hexdigest()


def mismatch() -> ApiError:
    return ApiError(
        "IdempotentParameterMismatch",
        "The specified parameter has changed while using an already used clientToken.",
    )


async def replay(
    conn: Conn, account: str, action: str, p: Params, result: dict[str, Any]
) -> dict[str, Any] | None:
    """Inside the creating transaction: None if this call must do its work (its `result` is
    now remembered under its ClientToken), else the first call's answer to return instead."""
    token = client_token(p)
    if not token:
        return None
    now = model.now_ms()
    prior = await claim_token(
        conn, (account, action, token), fingerprint(p), result, now, now + TOKEN_WINDOW_MS
    )
    if prior is None:
        return None
    seen, answer = prior
    if seen != fingerprint(p):
        raise mismatch()
    return answer
