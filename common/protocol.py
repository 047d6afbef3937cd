"""Agent request signing, the one contract agent and server share (docs/agent-protocol.md, Signing).

An agent signs every request after registration with its Ed25519 key over a canonical string;
the server checks the signature against the registered public key. Both sides use this module
(and one Ed25519 library, `cryptography`), so the string to sign cannot drift between them.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

HEADER_INSTANCE = "X-Assist-Instance-Id"
HEADER_TIMESTAMP = "X-Assist-Timestamp"
HEADER_NONCE = "X-Assist-Nonce"
HEADER_SIGNATURE = "X-Assist-Signature"
TIMESTAMP_WINDOW = 300  # seconds a signed request's timestamp may be off the server's clock
MAX_NONCE = 64  # characters
PUBLIC_KEY_BYTES = 32  # a raw Ed25519 public key


def canonical_string(
    method: str, path: str, query: str, timestamp: int | str, nonce: str, body: bytes
) -> bytes:
    """What the agent signs: METHOD, path, raw query, timestamp, nonce, sha256(body)."""
    digest = hashlib.sha256(body).hexdigest()
    parts = [method.upper(), path, query, str(timestamp), nonce, digest]
    return "\n".join(parts).encode("utf-8")


def new_nonce() -> str:
    """A fresh request nonce (uuid4 hex, 32 characters)."""
    return uuid.uuid4().hex


def sign_request(
    key: Ed25519PrivateKey,
    instance_id: str,
    method: str,
    path: str,
    query: str,
    body: bytes,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four X-Assist-* headers that sign one request as `instance_id`."""
    ts = int(time.time()) if timestamp is None else timestamp
    nonce = nonce or new_nonce()
    signature = key.sign(canonical_string(method, path, query, ts, nonce, body))
    return {
        HEADER_INSTANCE: instance_id,
        HEADER_TIMESTAMP: str(ts),
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: base64.b64encode(signature).decode("ascii"),
    }


def public_key_from_raw(raw: bytes) -> Ed25519PublicKey:
    """The public key of raw 32 bytes; ValueError if they are not a valid Ed25519 key."""
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def signature_valid(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """Whether `signature` signs `message` under `key` (a wrong-length signature is not)."""
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True
