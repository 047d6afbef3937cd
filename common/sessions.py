"""Agent sessions: an HMAC in place of the Ed25519 pair of every request and answer.

An agent opens a session with one Ed25519-signed request that carries an ephemeral X25519 public
key; the control plane answers, signed with its Ed25519 key as every answer, with its own
ephemeral key and a ticket. Both sides derive the same two keys from the X25519 secret
(HKDF-SHA256, bound to the instance and both ephemeral keys). Until the session expires, a
request carries the ticket and an HMAC-SHA256 of the same canonical string an Ed25519 signature
covers, under the request key; the answer carries an HMAC-SHA256 of the same response string,
under the response key. Nonces, timestamps and their checks are those of signed requests.

The ticket is the session's keys sealed (AES-GCM) by the control plane under a key derived from
its signing key, so every replica opens it without session state of its own, and a key rotation
ends the sessions of the old key (the agent opens another). docs/agent-protocol.md, Sessions.

Both sides use this module; the server's half (sealing, opening) is server/agent_api/sessions.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from common.protocol import (
    HEADER_INSTANCE,
    HEADER_NONCE,
    HEADER_SERVER_TIMESTAMP,
    REFUSED_BAD_SIGNATURE,
    REFUSED_UNSIGNED,
    ResponseRefusedError,
    check_echoes,
    check_stamp,
    request_head,
    response_string,
)

HEADER_SESSION = "X-Assist-Session"  # the ticket
HEADER_MAC = "X-Assist-Mac"  # base64 HMAC-SHA256 of the canonical string, request key
HEADER_SERVER_MAC = "X-Assist-Server-Mac"  # base64 HMAC-SHA256 of the response string
SESSION_PATH = "/v1/session"  # under /luban/api
SESSION_CONTEXT = b"assist-session-v1"
SESSION_LIFETIME = 24 * 3600  # seconds a ticket is good for
SESSION_RENEW = 3600  # seconds before its end an agent opens the next session
SESSION_EXPIRED = "SessionExpired"  # the server's code for a ticket it cannot or will not open
MAX_TICKET = 256  # characters
MAC_BYTES = 32
EXCHANGE_KEY_BYTES = 32


@dataclass(frozen=True)
class SessionKeys:
    """The two keys of one session: the agent's requests, the server's answers."""

    request: bytes
    response: bytes


@dataclass(frozen=True)
class Session:
    """What an agent holds: the ticket it sends, the keys, and when the ticket ends (Unix s)."""

    ticket: str
    keys: SessionKeys
    expires: int

    def due(self, now: float | None = None) -> bool:
        """Whether the agent should open the next session before its next request."""
        return (time.time() if now is None else now) > self.expires - SESSION_RENEW


def exchange_public(key: X25519PrivateKey) -> str:
    """An ephemeral X25519 key's public half, base64 raw."""
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def load_exchange_key(text: str) -> bytes:
    """The raw 32 bytes of a base64 X25519 public key; ValueError if it is not one."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the X25519 key is not base64") from exc
    if len(raw) != EXCHANGE_KEY_BYTES:
        raise ValueError(f"an X25519 key is {EXCHANGE_KEY_BYTES} bytes, not {len(raw)}")
    return raw


def derive_keys(
    own: X25519PrivateKey, peer_raw: bytes, instance_id: str, agent_raw: bytes, server_raw: bytes
) -> SessionKeys:
    """The session's keys from one side's ephemeral key and the other's public one (ValueError
    for a peer key of small order, whose secret would be all zeros)."""
    secret = own.exchange(X25519PublicKey.from_public_bytes(peer_raw))
    info = SESSION_CONTEXT + b"\n" + instance_id.encode("utf-8") + b"\n" + agent_raw + server_raw
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=info).derive(secret)
    return SessionKeys(request=okm[:32], response=okm[32:])


def agent_keys(own: X25519PrivateKey, server_b64: str, instance_id: str) -> SessionKeys:
    """The agent's side of derive_keys, from the server's answer."""
    agent_raw = own.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    server_raw = load_exchange_key(server_b64)
    return derive_keys(own, server_raw, instance_id, agent_raw, server_raw)


def mac(key: bytes, message: bytes) -> str:
    """Base64 HMAC-SHA256."""
    return base64.b64encode(hmac.digest(key, message, hashlib.sha256)).decode("ascii")


def mac_request(
    session: Session,
    instance_id: str,
    method: str,
    path: str,
    query: str,
    body: bytes,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The X-Assist-* headers of one request made in `session` (no Ed25519 signature)."""
    headers, message = request_head(instance_id, method, path, query, body, timestamp, nonce)
    headers[HEADER_SESSION] = session.ticket
    headers[HEADER_MAC] = mac(session.keys.request, message)
    return headers


def request_mac_valid(keys: SessionKeys, raw_mac: str, message: bytes) -> bool:
    """Whether `raw_mac` (base64) is the request key's HMAC of `message`."""
    return _mac_matches(keys.request, raw_mac, message)


def _mac_matches(key: bytes, raw_mac: str, message: bytes) -> bool:
    try:
        given = base64.b64decode(raw_mac, validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, hmac.digest(key, message, hashlib.sha256))


def mac_response(
    keys: SessionKeys,
    instance_id: str,
    nonce: str,
    path: str,
    status: int,
    body: bytes,
    timestamp: int | None = None,
) -> dict[str, str]:
    """The headers that authenticate one answer in a session."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        HEADER_INSTANCE: instance_id,
        HEADER_NONCE: nonce,
        HEADER_SERVER_TIMESTAMP: str(ts),
        HEADER_SERVER_MAC: mac(
            keys.response, response_string(instance_id, nonce, path, status, ts, body)
        ),
    }


def check_mac_response(
    keys: SessionKeys,
    instance_id: str,
    nonce: str,
    path: str,
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    now: float | None = None,
) -> None:
    """Raise ResponseRefusedError unless the session's response key authenticated this answer
    to this request, recently (the checks of common.protocol.check_response)."""
    raw_ts = headers.get(HEADER_SERVER_TIMESTAMP) or ""
    raw_mac = headers.get(HEADER_SERVER_MAC) or ""
    if not (raw_ts and raw_mac):
        raise ResponseRefusedError(REFUSED_UNSIGNED, f"the answer to {path} is not signed")
    check_echoes(headers, instance_id, nonce, path)
    check_stamp(raw_ts, path, now)
    message = response_string(instance_id, nonce, path, status, raw_ts, body)
    if not _mac_matches(keys.response, raw_mac, message):
        raise ResponseRefusedError(REFUSED_BAD_SIGNATURE, f"the answer to {path} is badly signed")


def open_request(own: X25519PrivateKey) -> dict[str, str]:
    """The body of a handshake (POST SESSION_PATH) made with the ephemeral key `own`."""
    return {"x25519": exchange_public(own)}


def session_from(own: X25519PrivateKey, answer: object, instance_id: str) -> Session:
    """The session a handshake's (verified) answer opened; KeyError, TypeError or ValueError
    for an answer that is not one."""
    if not isinstance(answer, dict):
        raise TypeError("the session answer is not a JSON object")
    keys = agent_keys(own, str(answer["x25519"]), instance_id)
    return Session(str(answer["ticket"]), keys, int(answer["expires"]))
