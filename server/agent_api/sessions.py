"""Agent sessions, the server's half: opening a session, sealing and opening its tickets.

A ticket is the session's two keys and its end, sealed with AES-GCM under a key derived from
the control plane's signing key (which every replica reads from the database), with the instance
id and the instance's registered public key as associated data. Any replica opens any ticket;
a ticket stops opening when it expires, when the signing key rotates, when the instance
registers again with another key, or, through the key lookup before it, when the instance is
deregistered. The protocol is common/sessions.py (docs/agent-protocol.md, Sessions).

Opened tickets are kept (TicketCache) so a request costs a dict lookup and one HMAC, and its
answer one HMAC: no Ed25519 on either side (docs/scale.md, Ingestion).
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
import time
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from common.sessions import MAX_TICKET, SESSION_EXPIRED, SessionKeys
from server.agent_api.auth import AgentError

if TYPE_CHECKING:
    from server.store.serverkeys import ServerKey

TICKET_CONTEXT = b"assist-session-ticket-v1"
TICKET_VERSION = 1
_HEAD = struct.Struct(">BI")  # version, serial of the signing key that sealed it
_NONCE_BYTES = 12
_SEALED = struct.Struct(">Q32s32s")  # expires (Unix s), request key, response key
CACHE_LIMIT = 1 << 17  # opened tickets kept per replica (the oldest go first)


def expired() -> AgentError:
    """401 SessionExpired: the agent opens a new session and sends the request again."""
    return AgentError(
        SESSION_EXPIRED, "the session ticket is expired or unknown here: open a new session", 401
    )


class Tickets:
    """Seal and open tickets; keeps the ones opened lately."""

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self.limit = limit
        self._sealers: dict[int, AESGCM] = {}  # signing-key serial -> its sealing key
        # ticket -> (instance id, registered public key, key serial, expires, keys)
        self._opened: dict[str, tuple[str, str, int, int, SessionKeys]] = {}

    def _sealer(self, key: ServerKey) -> AESGCM:
        sealer = self._sealers.get(key.serial)
        if sealer is None:
            raw = key.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=TICKET_CONTEXT)
            sealer = self._sealers[key.serial] = AESGCM(hkdf.derive(raw))
        return sealer

    def seal(
        self, key: ServerKey, instance_id: str, public_key: str, keys: SessionKeys, expires: int
    ) -> str:
        """A ticket for the session (URL-safe base64, ~140 characters)."""
        nonce = os.urandom(_NONCE_BYTES)
        plain = _SEALED.pack(expires, keys.request, keys.response)
        sealed = self._sealer(key).encrypt(nonce, plain, _bound(instance_id, public_key))
        raw = _HEAD.pack(TICKET_VERSION, key.serial) + nonce + sealed
        return base64.urlsafe_b64encode(raw).decode("ascii")

    def open(
        self,
        key: ServerKey,
        ticket: str,
        instance_id: str,
        public_key: str,
        now: float | None = None,
    ) -> SessionKeys | None:
        """The keys of a ticket sealed under `key` for this instance and its registered key,
        not yet expired; None otherwise."""
        now = time.time() if now is None else now
        known = self._opened.get(ticket)
        if known is not None:
            owner, bound_key, serial, ends, keys = known
            if owner == instance_id and bound_key == public_key and serial == key.serial:
                return keys if now < ends else None
            return None
        opened = self._unseal(key, ticket, instance_id, public_key)
        if opened is None:
            return None
        ends, keys = opened
        if len(self._opened) >= self.limit:
            del self._opened[next(iter(self._opened))]
        self._opened[ticket] = (instance_id, public_key, key.serial, ends, keys)
        return keys if now < ends else None

    def count(self) -> int:
        """Tickets this replica opened lately (/healthz)."""
        return len(self._opened)

    def known(self, ticket: str, instance_id: str) -> SessionKeys | None:
        """The keys of a ticket this replica opened for `instance_id` (to authenticate the
        answer to a request the ticket came with), expired or not; None otherwise."""
        known = self._opened.get(ticket)
        return known[4] if known is not None and known[0] == instance_id else None

    def _unseal(
        self, key: ServerKey, ticket: str, instance_id: str, public_key: str
    ) -> tuple[int, SessionKeys] | None:
        if len(ticket) > MAX_TICKET:
            return None
        try:
            raw = base64.urlsafe_b64decode(ticket.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            return None
        head = _HEAD.size
        if len(raw) != head + _NONCE_BYTES + _SEALED.size + 16:
            return None
        version, serial = _HEAD.unpack_from(raw)
        if version != TICKET_VERSION or serial != key.serial:
            return None  # another format, or a key rotated since: a new session
        nonce, sealed = raw[head : head + _NONCE_BYTES], raw[head + _NONCE_BYTES :]
        try:
            plain = self._sealer(key).decrypt(nonce, sealed, _bound(instance_id, public_key))
        except InvalidTag:
            return None
        ends, request, response = _SEALED.unpack(plain)
        return ends, SessionKeys(request, response)


def _bound(instance_id: str, public_key: str) -> bytes:
    return f"{instance_id}\n{public_key}".encode()
