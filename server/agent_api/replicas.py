"""The replica list agents fail over between (docs/agent-protocol.md, Replicas).

A replica started with `--advertise-url URL` announces that URL in the shared database every
`advertise_interval` seconds (server/store/replicas.py); `POST /luban/api/v1/server/replicas`
answers, signed like every agent answer, the URLs heard from within three intervals. The list is
cached for a moment per replica, so agents moving over all at once cost one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from server.store import replicas
from server.store.conn import Conn

if TYPE_CHECKING:
    from server.state import AgentIdentity, ServerState
    from server.store import Store

log = logging.getLogger(__name__)

STALE_INTERVALS = 3  # a replica not heard from for this many intervals is left out
LIST_CACHE = 2.0  # seconds one replica reuses the list it read
REFRESH = 600  # seconds agents keep a list before asking again (they ask after a failover too)


class ReplicaDirectory:
    """This replica's announcement, and the list of live replicas it hands to agents."""

    def __init__(self, store: Store, url: str, replica: str, interval: float) -> None:
        self.store = store
        self.url = url.rstrip("/")
        self.replica = replica
        self.interval = interval
        self._cached: tuple[float, list[str]] = (0.0, [])

    async def announce(self) -> None:
        """Write this replica's heartbeat row once."""
        now_ms = int(time.time() * 1000)
        await self.store.write(
            lambda conn: replicas.announce(conn, self.url, self.replica, now_ms), durable=False
        )

    async def run(self) -> None:
        """Announce every `interval` seconds until cancelled, then withdraw the row."""
        if not self.url:
            return
        try:
            while True:
                try:
                    await self.announce()
                except Exception as exc:  # the database is away: try again next round
                    log.warning("cannot announce replica %s: %s", self.url, exc)
                await asyncio.sleep(self.interval)
        finally:
            with contextlib.suppress(Exception):
                await self.store.write(lambda conn: replicas.withdraw(conn, self.url, self.replica))

    async def live(self) -> list[str]:
        """URLs of the replicas heard from recently (cached LIST_CACHE seconds)."""
        read_at, urls = self._cached
        if time.monotonic() - read_at < LIST_CACHE:
            return urls
        since = int((time.time() - STALE_INTERVALS * self.interval) * 1000)
        urls = await self.store.read(lambda conn: replicas.live(conn, since))
        self._cached = (time.monotonic(), urls)
        return urls


async def replica_list(state: ServerState, who: AgentIdentity, body: bytes) -> dict[str, Any]:
    """`POST /luban/api/v1/server/replicas` → {"replicas": [URL…], "refresh": seconds}."""

    async def _tx(conn: Conn) -> None:
        await state.use_agent_nonce(conn, who)

    await state.store.write(_tx, durable=False, key=who.instance_id)
    directory: ReplicaDirectory | None = state.replicas
    urls = await directory.live() if directory is not None else []
    return {"replicas": urls, "refresh": REFRESH}
