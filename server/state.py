"""What request handlers share in one process: settings, the store, the notifier, key cache."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common import protocol
from common.sessions import SessionKeys, request_mac_valid
from server.agent_api import auth
from server.agent_api.batch import FLUSH_INTERVAL, ReplicaWrites
from server.agent_api.crypto import CryptoThread
from server.agent_api.sessions import Tickets, expired
from server.notify import Notifier
from server.output_limits import DEFAULT_QUOTA
from server.store import Store, access, instances
from server.store.conn import Conn

# Seconds an instance's key is used without a DB read. Deregistration and re-registration drop
# it at once on every replica (Notifier.forget, and a cleared cache after a gap in LISTEN); the
# TTL only bounds a forget lost with its NOTIFY. 5 s made every long-poll (each 50 s) and every
# ingestion burst read each key again (docs/scale.md, Ingestion).
KEY_CACHE_TTL = 120.0


@dataclass
class Settings:
    """Tunables of one server process."""

    db_url: str | None = None
    max_invoke_instances: int = 100  # InstanceId.N per InvokeCommand, as the real API
    heartbeat_interval: int = 60  # seconds, told to agents
    max_poll: int = 60  # seconds a long-poll may wait
    offline_grace: int = 300  # seconds past a task's Timeout before an offline instance fails it
    history_days: int = 30  # finished runs of timed invocations are kept this long…
    history_keep: int = 1000  # …and at most this many per instance and invocation
    chores_interval: float = 60.0  # seconds between background upkeep rounds
    output_quota: int = DEFAULT_QUOTA  # bytes of output kept per execution (the tail)
    batch_interval: float = FLUSH_INTERVAL  # seconds between batched nonce/last-seen writes
    advertise_url: str = ""  # this replica's URL in the agents' replica list ("": not listed)
    advertise_interval: float = 10.0  # seconds between this replica's announcements
    bus_dir: str = ""  # the workers' bus of a SQLite server with --workers (server/bus.py)
    supervisor_pid: int = 0  # with --workers: the parent; a worker stops when it is gone


@dataclass
class AgentIdentity:
    """A verified agent request."""

    instance_id: str
    account: str
    nonce_key: str
    nonce_expires: int
    session: SessionKeys | None = None  # the request came in a session (common/sessions.py)
    public_key: str = ""  # the instance's registered key (base64), as checked


@dataclass
class _CachedKey:
    key: Ed25519PublicKey
    public_b64: str  # as registered
    account: str
    loaded: float


@dataclass
class ServerState:
    """Everything request handlers share in one process."""

    settings: Settings
    store: Store
    notifier: Notifier
    signing: Any = None  # server/agent_api/respond.py SigningKeys: the control plane's key
    batch: ReplicaWrites = field(init=False)
    replicas: Any = None  # server/agent_api/replicas.py ReplicaDirectory: the agents' list
    keys: dict[str, _CachedKey] = field(default_factory=dict)
    crypto: CryptoThread = field(default_factory=CryptoThread)  # Ed25519 work off the loop
    tickets: Tickets = field(default_factory=Tickets)  # agent sessions (sessions.py)
    forgets: int = field(default=0, init=False)  # counts forgets: a read they overtook is not kept

    def __post_init__(self) -> None:
        self.batch = ReplicaWrites(self.store, self.settings.batch_interval)
        self.notifier.on_forget = self._forget_keys

    @property
    def max_invoke_instances(self) -> int:
        return self.settings.max_invoke_instances

    @property
    def heartbeat_interval(self) -> int:
        return self.settings.heartbeat_interval

    async def forget_instance(self, instance_id: str) -> None:
        """Drop a cached key (after deregistration or re-registration), on every replica."""
        await self.notifier.forget([instance_id])

    def _forget_keys(self, instance_ids: list[str] | None) -> None:
        self.forgets += 1
        if instance_ids is None:
            self.keys.clear()
        for instance_id in instance_ids or []:
            self.keys.pop(instance_id, None)

    async def instance_key(self, instance_id: str) -> _CachedKey:
        """The registered key of an instance (cached briefly); 401 if unknown/deregistered."""
        cached = self.keys.get(instance_id)
        if cached and time.monotonic() - cached.loaded < KEY_CACHE_TTL:
            return cached

        async def _tx(conn: Conn) -> Any:
            row = await instances.get_instance(conn, instance_id)
            return row

        forgets = self.forgets
        row = await self.store.read(_tx, small=True)
        if row is None or row["deregistered"]:
            self.keys.pop(instance_id, None)
            raise auth.unauthorized("unknown or deregistered instance")
        public_b64 = str(row["public_key"])
        cached = _CachedKey(
            auth.load_public_key(public_b64), public_b64, row["account"], time.monotonic()
        )
        if self.forgets == forgets:  # a forget during the read may concern this very row
            self.keys[instance_id] = cached
        return cached

    async def authenticate(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> AgentIdentity:
        """Verify an agent request's Ed25519 signature, or its session's HMAC (the nonce is
        used by the handler)."""
        signed = auth.read_headers(headers)
        cached = await self.instance_key(signed.instance_id)
        message = protocol.canonical_string(
            method, path, query, signed.timestamp, signed.nonce, body
        )
        session = None
        if signed.ticket:
            key = await self.signing.current()
            opened = self.tickets.open(key, signed.ticket, signed.instance_id, cached.public_b64)
            if opened is None:
                raise expired()
            if not request_mac_valid(opened.keys, signed.mac, message):
                raise auth.bad_signature()
            self.tickets.keep(signed.ticket, opened)
            session = opened.keys
        elif not await self.crypto.valid(cached.key, signed.signature, message):
            raise auth.bad_signature()
        return AgentIdentity(
            instance_id=signed.instance_id,
            account=cached.account,
            nonce_key=f"a:{signed.instance_id}:{signed.nonce}",
            nonce_expires=signed.timestamp + protocol.TIMESTAMP_WINDOW + 60,
            session=session,
            public_key=cached.public_b64,
        )

    async def use_agent_nonce(
        self, conn: Conn, who: AgentIdentity, claim: access.NonceClaim | None = None
    ) -> None:
        """Record the request's nonce in the caller's transaction, unless a statement took it
        along already (`claim`, server/store/tasks.py); 401 on a replay."""
        fresh = claim.fresh if claim is not None else None
        if fresh is None:
            fresh = await access.use_nonce(conn, who.nonce_key, who.nonce_expires)
        if not fresh:
            raise auth.unauthorized("nonce already used", "ReplayedRequest")
