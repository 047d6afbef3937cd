"""ClientToken: a retried create-type call returns the first call's answer and does nothing
again; the same token with other parameters is refused (docs/operator-api.md)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
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
    key = (account, action, hashlib.sha256(token.encode()).hexdigest())
    sealed = seal(token, key, result)
    prior = await claim_token(conn, key, fingerprint(p), sealed, now, now + TOKEN_WINDOW_MS)
    if prior is None:
        return None
    seen, answer = prior
    if seen != fingerprint(p):
        raise mismatch()
    return unseal(token, key, answer)


# The database keeps neither a ClientToken nor the answer in clear (a CreateActivation answer
# holds the activation code): the row is found by the token's sha256 and the answer is sealed
# with AES-GCM under a key derived from the token, which only the retrying client has.


def _answer_key(token: str, key: tuple[str, str, str]) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    info = f"assist client token|{key[0]}|{key[1]}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(token.encode())


def seal(token: str, key: tuple[str, str, str], answer: dict[str, Any]) -> dict[str, Any]:
    """The answer as stored: encrypted and authenticated under the token's key."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    box = AESGCM(_answer_key(token, key)).encrypt(nonce, json.dumps(answer).encode(), None)
    return {"sealed": base64.b64encode(nonce + box).decode()}


def unseal(token: str, key: tuple[str, str, str], stored: dict[str, Any]) -> dict[str, Any]:
    """The first call's answer back from its stored form."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    raw = base64.b64decode(stored["sealed"])
    plain = AESGCM(_answer_key(token, key)).decrypt(raw[:12], raw[12:], None)
    return dict(json.loads(plain))
