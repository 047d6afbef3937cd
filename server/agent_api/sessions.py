"""Agent sessions, the server's half: sealing and opening tickets (the handshake itself is
server/agent_api/handlers.py `open_session`).

A ticket is the session's two keys and its end, sealed with AES-GCM under a key derived from
the control plane's signing key (which every replica reads from the database), with the instance
id and the instance's registered public key as associated data. Any replica opens any ticket;
a ticket stops opening when it expires, when the signing key rotates, when the instance
registers again with another key, or, through the key lookup before it, when the instance is
deregistered. The protocol is common/sessions.py (docs/agent-protocol.md, Sessions).

A ticket whose request authenticated is kept (`Tickets.keep`), so the next request costs a dict
lookup and one HMAC, and its answer one HMAC: no Ed25519 on either side (docs/scale.md,
Ingestion). A ticket has exactly one spelling (strict base64), so one seen on the wire cannot
be varied into many entries.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from common.sessions import SESSION_EXPIRED, SessionKeys
from server.agent_api.auth import AgentError

if TYPE_CHECKING:
    from server.store.serverkeys import ServerKey

TICKET_CONTEXT = b"assist-session-ticket-v1"
TICKET_VERSION = 1
_HEAD = struct.Struct(">BI")  # version, serial of the signing key that sealed it
_NONCE_BYTES = 12
_SEALED = struct.Struct(">Q32s32s")  # expires (Unix s), request key, response key
_TICKET_BYTES = _HEAD.size + _NONCE_BYTES + _SEALED.size + 16  # 16: the AES-GCM tag
TICKET_CHARS = 4 * ((_TICKET_BYTES + 2) // 3)  # base64 of those bytes
CACHE_LIMIT = 1 << 17  # tickets kept per replica (the oldest go first)
HANDSHAKE_SPACING = 10.0  # seconds between two new sessions of one instance, per replica


def expired() -> AgentError:
    """401 SessionExpired: the agent opens a new session and sends the request again."""
    return AgentError(
        SESSION_EXPIRED, "the session ticket is expired or unknown here: open a new session", 401
    )


@dataclass(frozen=True)
class Opened:
    """A ticket opened for one instance: its keys, its end, and what it is bound to."""

    keys: SessionKeys
    ends: int  # Unix s
    instance_id: str
    public_key: str  # the instance's registered key
    serial: int  # of the signing key that sealed it


class Tickets:
    """Seal and open tickets; keeps those whose requests authenticated lately."""

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self.limit = limit
        self._sealers: dict[int, AESGCM] = {}  # signing-key serial -> its sealing key
        self._kept: OrderedDict[str, Opened] = OrderedDict()  # oldest first
        self._handshakes: dict[str, float] = {}  # holder -> monotonic time of its last

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
        """A ticket for the session (URL-safe base64, 140 characters)."""
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
    ) -> Opened | None:
        """The ticket, if `key` sealed it for this instance and its registered key and it has
        not ended; None otherwise. `keep` it once the request's MAC checked."""
        now = time.time() if now is None else now
        opened = self._kept.get(ticket) or self._unseal(key, ticket, instance_id, public_key)
        if opened is None or now >= opened.ends or opened.serial != key.serial:
            return None
        if opened.instance_id != instance_id or opened.public_key != public_key:
            return None
        return opened

    def keep(self, ticket: str, opened: Opened) -> None:
        """Remember a ticket whose request authenticated: its next request costs a lookup."""
        if ticket not in self._kept:
            if len(self._kept) >= self.limit:
                self._kept.popitem(last=False)
            self._kept[ticket] = opened

    def count(self) -> int:
        """Tickets this replica keeps (/healthz)."""
        return len(self._kept)

    def known(self, ticket: str, instance_id: str) -> SessionKeys | None:
        """The keys of a kept ticket of `instance_id`, to authenticate the answer to a request
        that came with it; None otherwise (the answer is then signed with Ed25519)."""
        opened = self._kept.get(ticket)
        return opened.keys if opened is not None and opened.instance_id == instance_id else None

    def handshake_allowed(self, holder: str, now: float | None = None) -> bool:
        """At most one new session per `holder` (an instance and its key) and HANDSHAKE_SPACING
        on this replica: a stolen instance key cannot churn the ticket cache or the replica's
        CPU with them."""
        now = time.monotonic() if now is None else now
        last = self._handshakes.get(holder)
        if last is not None and now - last < HANDSHAKE_SPACING:
            return False
        if len(self._handshakes) >= self.limit:
            cutoff = now - HANDSHAKE_SPACING
            self._handshakes = {i: t for i, t in self._handshakes.items() if t >= cutoff}
        self._handshakes[holder] = now
        return True

    def _unseal(
        self, key: ServerKey, ticket: str, instance_id: str, public_key: str
    ) -> Opened | None:
        if len(ticket) != TICKET_CHARS or not ticket.isascii():
            return None
        try:
            raw = base64.urlsafe_b64decode(ticket)
        except (binascii.Error, ValueError):
            return None
        # strict: one ticket has one spelling (the decoder skips or maps other characters)
        if len(raw) != _TICKET_BYTES or base64.urlsafe_b64encode(raw).decode() != ticket:
            return None
        version, serial = _HEAD.unpack_from(raw)
        if version != TICKET_VERSION or serial != key.serial:
            return None  # another format, or a key rotated since: a new session
        head = _HEAD.size
        nonce, sealed = raw[head : head + _NONCE_BYTES], raw[head + _NONCE_BYTES :]
        try:
            plain = self._sealer(key).decrypt(nonce, sealed, _bound(instance_id, public_key))
        except InvalidTag:
            return None
        ends, request, response = _SEALED.unpack(plain)
        return Opened(SessionKeys(request, response), ends, instance_id, public_key, serial)


def _bound(instance_id: str, public_key: str) -> bytes:
    return f"{instance_id}\n{public_key}".encode()
