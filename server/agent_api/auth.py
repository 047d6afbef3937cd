"""Agent request signing: Ed25519 over a canonical string, timestamp window, nonce replay.

Signatures are checked with libsodium (PyNaCl): on every agent request this is the server's
largest single cost, and libsodium verifies in about half the time OpenSSL's Ed25519 takes
(bench/bench_server.py, server_ingest_rate_*).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from server.inputs import ascii_int

TIMESTAMP_WINDOW = 300  # seconds
MAX_NONCE = 64
HEADER_INSTANCE = "x-assist-instance-id"
HEADER_TIMESTAMP = "x-assist-timestamp"
HEADER_NONCE = "x-assist-nonce"
HEADER_SIGNATURE = "x-assist-signature"


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
    """The four signing headers of one request, syntactically checked."""

    instance_id: str
    timestamp: int
    nonce: str
    signature: bytes


def canonical_string(
    method: str, path: str, query: str, timestamp: int | str, nonce: str, body: bytes
) -> bytes:
    """What the agent signs: METHOD, path, raw query, timestamp, nonce, sha256(body)."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join([method.upper(), path, query, str(timestamp), nonce, digest]).encode("utf-8")


def read_headers(headers: Mapping[str, str], now: float | None = None) -> SignedHeaders:
    """Parse and check the signing headers (not the signature itself)."""
    get = headers.get
    instance_id = get(HEADER_INSTANCE) or ""
    raw_ts = get(HEADER_TIMESTAMP) or ""
    nonce = get(HEADER_NONCE) or ""
    raw_sig = get(HEADER_SIGNATURE) or ""
    if not (instance_id and raw_ts and nonce and raw_sig):
        raise unauthorized("the request is not signed (X-Assist-* headers missing)")
    if len(instance_id) > 64 or len(nonce) > MAX_NONCE:
        raise unauthorized("instance id or nonce too long")
    timestamp = ascii_int(raw_ts, 12)
    if timestamp is None:
        raise unauthorized("X-Assist-Timestamp must be Unix seconds")
    now = time.time() if now is None else now
    if abs(now - timestamp) > TIMESTAMP_WINDOW:
        raise unauthorized("X-Assist-Timestamp is more than 300 s off the server's clock")
    try:
        signature = base64.b64decode(raw_sig, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise unauthorized("X-Assist-Signature is not base64") from exc
    return SignedHeaders(instance_id, timestamp, nonce, signature)


def load_public_key(text: str) -> VerifyKey:
    """A base64 raw 32-byte Ed25519 public key."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AgentError("InvalidParameter", "public_key must be base64", 400) from exc
    if len(raw) != 32:
        raise AgentError("InvalidParameter", "public_key must be a raw 32-byte Ed25519 key", 400)
    return VerifyKey(raw)


def verify(key: VerifyKey, signature: bytes, message: bytes) -> None:
    """Raise 401 InvalidSignature unless `signature` signs `message` under `key`."""
    try:
        key.verify(message, signature)
    except (CryptoError, ValueError) as exc:  # a bad signature, or not 64 bytes long
        raise unauthorized("bad signature") from exc
