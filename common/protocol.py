"""Agent request and server response signing: the contract agent and server share.

An agent signs every request after registration with its Ed25519 key over a canonical string;
the server checks the signature against the registered public key. The control plane signs every
answer with its own Ed25519 key, bound to the instance and the request's nonce, and proves that
key at registration with a MAC keyed from the activation code (docs/agent-protocol.md, Signing). Both sides use this module
(and one Ed25519 library, `cryptography`), so the string to sign cannot drift between them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from common.errors import VerificationError

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
    headers, message = request_head(instance_id, method, path, query, body, timestamp, nonce)
    headers[HEADER_SIGNATURE] = base64.b64encode(key.sign(message)).decode("ascii")
    return headers


def request_head(
    instance_id: str,
    method: str,
    path: str,
    query: str,
    body: bytes,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> tuple[dict[str, str], bytes]:
    """The instance, timestamp and nonce headers of one request (now and a fresh nonce unless
    given), and the canonical string a signature or a session's MAC covers."""
    ts = int(time.time()) if timestamp is None else timestamp
    nonce = nonce or new_nonce()
    headers = {HEADER_INSTANCE: instance_id, HEADER_TIMESTAMP: str(ts), HEADER_NONCE: nonce}
    return headers, canonical_string(method, path, query, ts, nonce, body)


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


# --- responses: the control plane signs what makes the agent act (docs/agent-protocol.md) ------

HEADER_SERVER_KEY = "X-Assist-Server-Key"  # base64 raw public key that signed this response
HEADER_SERVER_TIMESTAMP = "X-Assist-Server-Timestamp"
HEADER_SERVER_SIGNATURE = "X-Assist-Server-Signature"
RESPONSE_WINDOW = 300  # seconds a signed response's timestamp may be off the agent's clock
RESPONSE_CONTEXT = "assist-response-v1"
ROTATION_CONTEXT = "assist-key-rotation-v1"

# Error codes an agent reports when it refuses a response (they reach DescribeInvocationResults).
REFUSED_UNSIGNED = "ResponseNotSigned"
REFUSED_BAD_SIGNATURE = "ResponseSignatureInvalid"
REFUSED_UNKNOWN_KEY = "ResponseKeyUnknown"
REFUSED_STALE = "ResponseStale"
REFUSED_REPLAYED = "ResponseReplayed"


class ResponseRefusedError(VerificationError):
    """A server answer failed its signature check: nothing in it may be acted on."""

    reference = "response-refused"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(
            f"refused a server answer ({code}): {message}",
            hint="something between this agent and its control plane changed or replayed the"
            " answer; check proxies and load balancers on the path (docs/SECURITY.md)",
        )
        self.code = code
        self.body = b""  # the refused answer (set by the agent's client)


def response_string(
    instance_id: str, nonce: str, path: str, status: int, timestamp: int | str, body: bytes
) -> bytes:
    """What the server signs: context, instance id, request nonce, path, status, time, sha256."""
    digest = hashlib.sha256(body).hexdigest()
    parts = [RESPONSE_CONTEXT, instance_id, nonce, path, str(status), str(timestamp), digest]
    return "\n".join(parts).encode("utf-8")


def raw_public_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return base64.b64encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


def sign_response(
    key: Ed25519PrivateKey,
    instance_id: str,
    nonce: str,
    path: str,
    status: int,
    body: bytes,
    timestamp: int | None = None,
    public_b64: str | None = None,
) -> dict[str, str]:
    """The headers that sign one answer to `instance_id`'s request carrying `nonce`."""
    ts = int(time.time()) if timestamp is None else timestamp
    signature = key.sign(response_string(instance_id, nonce, path, status, ts, body))
    return {
        HEADER_INSTANCE: instance_id,
        HEADER_NONCE: nonce,
        HEADER_SERVER_TIMESTAMP: str(ts),
        HEADER_SERVER_KEY: public_b64 or raw_public_b64(key),
        HEADER_SERVER_SIGNATURE: base64.b64encode(signature).decode("ascii"),
    }


def check_response(
    trusted: Mapping[str, Ed25519PublicKey],
    instance_id: str,
    nonce: str,
    path: str,
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    now: float | None = None,
) -> None:
    """Raise ResponseRefusedError unless a trusted key signed this answer to this request.

    `trusted` maps base64 public keys to keys (the pinned key and the keys it endorsed).
    """
    key_b64, raw_ts, raw_sig = _signature_headers(headers, HEADER_SERVER_SIGNATURE, path)
    check_echoes(headers, instance_id, nonce, path)
    _check_signed_by(
        trusted,
        path,
        key_b64,
        raw_ts,
        raw_sig,
        now,
        lambda ts: response_string(instance_id, nonce, path, status, ts, body),
    )


def check_echoes(headers: Mapping[str, str], instance_id: str, nonce: str, path: str) -> None:
    """ResponseReplayed unless the answer echoes this instance and this request's nonce."""
    if headers.get(HEADER_INSTANCE) != instance_id or headers.get(HEADER_NONCE) != nonce:
        raise ResponseRefusedError(
            REFUSED_REPLAYED, f"the answer to {path} was signed for another instance or request"
        )


def check_stamp(raw_ts: str, path: str, now: float | None = None) -> None:
    """Refuse an answer whose server timestamp is not a number, or is more than RESPONSE_WINDOW
    off this clock."""
    if not raw_ts.isascii() or not raw_ts.isdigit() or len(raw_ts) > 12:
        raise ResponseRefusedError(REFUSED_BAD_SIGNATURE, "the answer's timestamp is not a number")
    now = time.time() if now is None else now
    if abs(now - int(raw_ts)) > RESPONSE_WINDOW:
        raise ResponseRefusedError(
            REFUSED_STALE, f"the answer to {path} is more than {RESPONSE_WINDOW} s old or new"
        )


def _signature_headers(
    headers: Mapping[str, str], signature_header: str, path: str
) -> tuple[str, str, str]:
    """The key, timestamp and signature headers of a signed answer; ResponseNotSigned unless
    all three are there."""
    key_b64 = headers.get(HEADER_SERVER_KEY) or ""
    raw_ts = headers.get(HEADER_SERVER_TIMESTAMP) or ""
    raw_sig = headers.get(signature_header) or ""
    if not (key_b64 and raw_ts and raw_sig):
        raise ResponseRefusedError(REFUSED_UNSIGNED, f"the answer to {path} is not signed")
    return key_b64, raw_ts, raw_sig


def _check_signed_by(
    trusted: Mapping[str, Ed25519PublicKey],
    path: str,
    key_b64: str,
    raw_ts: str,
    raw_sig: str,
    now: float | None,
    message: Callable[[str], bytes],
) -> None:
    """Raise ResponseRefusedError unless a trusted key signed message(timestamp) recently."""
    key = trusted.get(key_b64)
    if key is None:
        raise ResponseRefusedError(
            REFUSED_UNKNOWN_KEY,
            f"the answer to {path} is signed by a key this agent does not trust",
        )
    check_stamp(raw_ts, path, now)
    try:
        signature = base64.b64decode(raw_sig, validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    if not signature_valid(key, signature, message(raw_ts)):
        raise ResponseRefusedError(REFUSED_BAD_SIGNATURE, f"the answer to {path} is badly signed")


# --- shared kicks: one signature for every agent a kick wakes (docs/agent-protocol.md) ---------

HEADER_KICK_SIGNATURE = "X-Assist-Kick-Signature"
KICK_CONTEXT = "assist-kick-v1"
SHARED_PARAM = "shared"  # the long-poll's query asks for them (an older agent does not)
SHARED_KICKS = f"{SHARED_PARAM}=1"


def audience_tag(instance_id: str) -> str:
    """How a shared kick names an instance it is for: a digest, so that no agent learns the
    ids of the other instances one InvokeCommand reached."""
    return hashlib.sha256(f"{KICK_CONTEXT}\n{instance_id}".encode()).hexdigest()[:32]


def kick_string(path: str, timestamp: int | str, body: bytes) -> bytes:
    """What the server signs once for a kick: context, path, time, sha256 of the whole answer
    (which names the kick's id and every instance it is for)."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join([KICK_CONTEXT, path, str(timestamp), digest]).encode("utf-8")


def sign_kick(
    key: Ed25519PrivateKey, path: str, body: bytes, public_b64: str, timestamp: int | None = None
) -> dict[str, str]:
    """The headers that sign one long-poll answer shared by a kick's whole audience."""
    ts = int(time.time()) if timestamp is None else timestamp
    signature = key.sign(kick_string(path, ts, body))
    return {
        HEADER_SERVER_TIMESTAMP: str(ts),
        HEADER_SERVER_KEY: public_b64,
        HEADER_KICK_SIGNATURE: base64.b64encode(signature).decode("ascii"),
    }


def check_kick(
    trusted: Mapping[str, Ed25519PublicKey],
    instance_id: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    now: float | None = None,
) -> tuple[str, int]:
    """(kick id, server time) of a shared long-poll answer a trusted key signed for a kick that
    names `instance_id`; ResponseRefusedError otherwise. It carries no nonce of this agent's:
    the caller takes each kick id once and none signed before it started (agent/client.py)."""
    key_b64, raw_ts, raw_sig = _signature_headers(headers, HEADER_KICK_SIGNATURE, path)
    _check_signed_by(
        trusted, path, key_b64, raw_ts, raw_sig, now, lambda ts: kick_string(path, ts, body)
    )
    try:
        kick = json.loads(body).get("kick")
        kick_id, audience = str(kick["id"]), kick["audience"]
    except (ValueError, AttributeError, KeyError, TypeError):
        raise ResponseRefusedError(
            REFUSED_BAD_SIGNATURE, f"the shared answer to {path} names no kick"
        ) from None
    if not isinstance(audience, list) or audience_tag(instance_id) not in audience:
        raise ResponseRefusedError(
            REFUSED_REPLAYED, f"the shared answer to {path} is for other instances"
        )
    return kick_id, int(raw_ts)


def rotation_string(old_b64: str, new_b64: str) -> bytes:
    """What the old control-plane key signs to hand over to the new one."""
    return "\n".join([ROTATION_CONTEXT, old_b64, new_b64]).encode("utf-8")


def follow_rotations(pinned_b64: str, chain: list[tuple[str, str]]) -> list[str]:
    """The keys `pinned_b64` endorses through `chain` [(new_b64, signature_by_previous_b64)…].

    The chain lists keys oldest first, each endorsed by the one before it. Returns the pinned
    key followed by every later key reached by valid endorsements (stops at the first bad link).
    """
    trusted = [pinned_b64]
    started = False
    previous = ""
    for new_b64, endorsement in chain:
        if not started:
            if new_b64 == pinned_b64:
                started = True
                previous = new_b64
            continue
        try:
            old = public_key_from_raw(base64.b64decode(previous, validate=True))
            signature = base64.b64decode(endorsement, validate=True)
            public_key_from_raw(base64.b64decode(new_b64, validate=True))
        except (binascii.Error, ValueError):
            break
        if not signature_valid(old, signature, rotation_string(previous, new_b64)):
            break
        trusted.append(new_b64)
        previous = new_b64
    return trusted


# --- registration: both sides prove the activation code without sending it --------------------

ACTIVATION_SALT = b"assist-activation-v1"


def activation_secret(code: str) -> bytes:
    """What both sides hold: sha256 of the code (the server stores only this digest)."""
    return hashlib.sha256(code.encode("utf-8")).hexdigest().encode("ascii")


def activation_mac_key(activation_id: str, secret: bytes) -> bytes:
    """HKDF-SHA256 over the activation secret, bound to the activation id."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=ACTIVATION_SALT, info=activation_id.encode()
    )
    return hkdf.derive(secret)


def _mac(key: bytes, role: str, fields: list[str]) -> str:
    message = "\n".join([f"assist-register-{role}-v1", *fields]).encode("utf-8")
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode("ascii")


def agent_proof(
    key: bytes, activation_id: str, agent_key: str, instance_id: str, nonce: str, timestamp: int
) -> str:
    """The agent's MAC: it holds the code and sends this key, for this id, now."""
    return _mac(key, "agent", [activation_id, agent_key, instance_id, nonce, str(timestamp)])


def server_proof(
    key: bytes,
    activation_id: str,
    agent_key: str,
    server_key: str,
    instance_id: str,
    agent_nonce: str,
    server_nonce: str,
) -> str:
    """The server's MAC: the control plane holding the code vouches for `server_key`."""
    fields = [activation_id, agent_key, server_key, instance_id, agent_nonce, server_nonce]
    return _mac(key, "server", fields)


def proofs_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two proofs."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
