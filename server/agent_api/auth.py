"""Agent request signing, the server's side: header checks, timestamp window, Ed25519 verify.

The string to sign and the header names are common/protocol.py (docs/agent-protocol.md, Signing),
shared with the agent; a request in a session carries a ticket and an HMAC in place of the
signature (common/sessions.py).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.protocol import (
    HEADER_INSTANCE,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    MAX_NONCE,
    TIMESTAMP_WINDOW,
    public_key_from_raw,
    signature_valid,
)
from common.sessions import HEADER_MAC, HEADER_SESSION, MAX_TICKET
from server.inputs import ascii_int


class AgentError(Exception):
    """An agent API error: HTTP status plus {"code","message"}."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def unauthorized(message: str, code: str = "InvalidSignature") -> AgentError:
    return AgentError(code, message, 401)


@dataclass(frozen=True)
class SignedHeaders:
    """The signing headers of one request, syntactically checked: an Ed25519 `signature`, or
    a session's `ticket` and `mac` (base64, checked against the session's key)."""

    instance_id: str
    timestamp: int
    nonce: str
    signature: bytes
    ticket: str = ""
    mac: str = ""


def read_headers(headers: Mapping[str, str], now: float | None = None) -> SignedHeaders:
    """Parse and check the signing headers (not the signature itself)."""
    get = headers.get
    instance_id = get(HEADER_INSTANCE) or ""
    raw_ts = get(HEADER_TIMESTAMP) or ""
    nonce = get(HEADER_NONCE) or ""
    raw_sig = get(HEADER_SIGNATURE) or ""
    ticket = get(HEADER_SESSION) or ""
    mac = (get(HEADER_MAC) or "") if ticket else ""
    if not (instance_id and raw_ts and nonce and (raw_sig or mac)):
        raise unauthorized("the request is not signed (X-Assist-* headers missing)")
    if raw_sig and ticket:
        raise unauthorized("a request is signed or sent in a session, not both")
    if len(instance_id) > 64 or len(nonce) > MAX_NONCE or len(ticket) > MAX_TICKET:
        raise unauthorized("instance id, nonce or session ticket too long")
    timestamp = ascii_int(raw_ts, 12)
    if timestamp is None:
        raise unauthorized("X-Assist-Timestamp must be Unix seconds")
    now = time.time() if now is None else now
    if abs(now - timestamp) > TIMESTAMP_WINDOW:
        raise unauthorized("X-Assist-Timestamp is more than 300 s off the server's clock")
    if ticket:
        return SignedHeaders(instance_id, timestamp, nonce, b"", ticket, mac)
    try:
        signature = base64.b64decode(raw_sig, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise unauthorized("X-Assist-Signature is not base64") from exc
    return SignedHeaders(instance_id, timestamp, nonce, signature)


def load_public_key(text: str) -> Ed25519PublicKey:
    """A base64 raw 32-byte Ed25519 public key."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AgentError("InvalidParameter", "public_key must be base64", 400) from exc
    try:
        return public_key_from_raw(raw)
    except ValueError as exc:
        raise AgentError(
            "InvalidParameter", "public_key must be a raw 32-byte Ed25519 key", 400
        ) from exc


def bad_signature() -> AgentError:
    """401 InvalidSignature: a bad signature, or one not 64 bytes long."""
    return unauthorized("bad signature")


def verify(key: Ed25519PublicKey, signature: bytes, message: bytes) -> None:
    """Raise 401 InvalidSignature unless `signature` signs `message` under `key`."""
    if not signature_valid(key, signature, message):
        raise bad_signature()
