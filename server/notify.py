"""Wake-ups for long-polling agents: in-process waiters, fanned out across replicas.

`Notifier.wait()` parks a long-poll on an asyncio.Event — no database connection is held while
it waits. `publish()` delivers an event to local waiters at once and, with PostgreSQL, sends it
through NOTIFY so waiters on every other replica wake too (LISTEN on one dedicated asyncpg
connection per replica). Events for an instance that is between two polls are buffered briefly
so the next poll returns at once. Each instance has at most one parked poll per replica: a new
poll dismisses the older one (a restarted agent's dead poll), and a poll cancelled because its
client went away hands its events back to the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

log = logging.getLogger(__name__)

CHANNEL = "assist_notify"
PENDING_TTL = 90.0  # seconds an undelivered event is kept for the next poll
MAX_PAYLOAD = 7000  # bytes per NOTIFY (PostgreSQL's limit is 8000)
MAX_EVENT = 3000  # bytes of an event sent along to other replicas as it is

Event = dict[str, Any]


class _Waiter:
    """One parked long-poll: its wake-up and the events handed to it while parked."""

    __slots__ = ("events", "woken")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.woken = asyncio.Event()


class _Slot:
    """Buffered events and the parked long-poll of one instance."""

    __slots__ = ("events", "stamp", "waiter")

    def __init__(self) -> None:
        self.events: list[Event] = []  # for the next poll: nobody was parked
        self.stamp = 0.0
        self.waiter: _Waiter | None = None  # at most one: the newest poll


class Notifier:
    """Per-replica hub of long-poll waiters."""

    def __init__(self, pg_dsn: str | None = None) -> None:
        self.replica = uuid.uuid4().hex
        self._slots: dict[str, _Slot] = {}
        self._dsn = pg_dsn
        self._conn: Any = None
        self._watch: asyncio.Task[None] | None = None
        self._closing = False
        self._lock: asyncio.Lock | None = None
        # drops cached instance keys: the ids named, or every one (None) after a gap in LISTEN
        self.on_forget: Callable[[list[str] | None], None] = lambda _ids: None

    # --- local delivery ------------------------------------------------------------------

    def deliver(self, instance_ids: Iterable[str], event: Event) -> None:
        """Hand `event` to each instance's parked poll, or keep it for its next poll."""
        now = time.monotonic()
        for iid in instance_ids:
            slot = self._slots.get(iid)
            if slot is None:
                slot = self._slots[iid] = _Slot()
            if slot.waiter is not None:
                _add(slot.waiter.events, [event])
                slot.waiter.woken.set()
                continue
            if now - slot.stamp > PENDING_TTL:
                slot.events = []
            _add(slot.events, [event])
            slot.stamp = now

    async def wait(self, instance_id: str, timeout: float) -> list[Event]:
        """Return pending events for the instance as soon as there are any, or [] on timeout.

        One live poll per instance: a new poll dismisses the one parked before it (an agent
        that restarted leaves its dead predecessor's poll behind, and the server does not see
        that client go). The dismissed poll answers [] and hands whatever it had been given to
        the new one, so no event is answered to a dead connection.
        """
        slot = self._slots.get(instance_id)
        if slot is None:
            slot = self._slots[instance_id] = _Slot()
        if slot.waiter is not None:
            self._dismiss(slot, slot.waiter)
        events = self._take_buffered(slot)
        if not events:
            events = await self._park(slot, timeout)
        if slot.waiter is None and not slot.events and self._slots.get(instance_id) is slot:
            del self._slots[instance_id]  # not a newer slot: a dismissed poll may end late
        return events

    async def _park(self, slot: _Slot, timeout: float) -> list[Event]:
        """Wait as the instance's poll; give events back to the buffer if cancelled."""
        me = slot.waiter = _Waiter()
        try:
            # asyncio.timeout, not wait_for: wait_for may swallow a cancel once woken (3.11)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await me.woken.wait()
        except asyncio.CancelledError:  # the client went away: keep its events for the next
            self._dismiss(slot, me)
            raise
        finally:
            if slot.waiter is me:
                slot.waiter = None
        return me.events

    def give_back(self, instance_id: str, events: list[Event]) -> None:
        """Return events a poll took but could not answer (its client left) for the next poll."""
        for event in events:
            self.deliver([instance_id], event)

    @staticmethod
    def _dismiss(slot: _Slot, waiter: _Waiter) -> None:
        """Wake `waiter` empty-handed, moving its events to the buffer for the next poll."""
        if waiter.events:
            if time.monotonic() - slot.stamp > PENDING_TTL:
                slot.events = []
            _add(slot.events, waiter.events)
            slot.stamp = time.monotonic()
            waiter.events = []
        if slot.waiter is waiter:
            slot.waiter = None
        waiter.woken.set()

    @staticmethod
    def _take_buffered(slot: _Slot) -> list[Event]:
        """The buffered events (if not stale), removed from the buffer."""
        events = slot.events if time.monotonic() - slot.stamp <= PENDING_TTL else []
        slot.events = []
        return events

    def waiting(self) -> int:
        """How many long-polls are parked on this replica."""
        return sum(1 for s in self._slots.values() if s.waiter is not None)

    def sweep(self) -> None:
        """Drop stale buffered events of instances nobody is polling for."""
        now = time.monotonic()
        for iid in [
            k for k, s in self._slots.items() if s.waiter is None and now - s.stamp > PENDING_TTL
        ]:
            del self._slots[iid]

    # --- cross-replica fan-out -------------------------------------------------------------

    async def publish(self, instance_ids: Sequence[str], event: Event) -> None:
        """Deliver locally now, then tell the other replicas (PostgreSQL only).
        A NOTIFY that fails is logged: the other replicas' agents list their tasks anyway."""
        self.deliver(instance_ids, event)
        if instance_ids and self._dsn is not None:  # no payloads built for a lone SQLite server
            await self._notify(_payloads(self.replica, instance_ids, event))

    async def forget(self, instance_ids: Sequence[str]) -> None:
        """Make every replica drop its cached keys of these instances (deregistered, or
        registered anew): here at once, on the others through NOTIFY (PostgreSQL only). A
        NOTIFY that fails leaves the others' caches to expire (server/state.py KEY_CACHE_TTL)."""
        self.on_forget(list(instance_ids))
        if instance_ids:
            await self._notify([json.dumps({"r": self.replica, "f": list(instance_ids)})])

    async def _notify(self, payloads: Sequence[str]) -> None:
        """Send payloads to the other replicas, each on its own; a failure is logged."""
        if self._dsn is None:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one asyncpg connection runs one query at a time
            for payload in payloads:
                try:
                    conn = await self._connection()
                    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
                except Exception as exc:
                    log.warning("NOTIFY failed: %s", exc)

    async def start(self) -> None:
        """Open the LISTEN connection (PostgreSQL only) and watch it."""
        if self._dsn is None:
            return
        await self._connection()
        self._watch = asyncio.create_task(self._keep_listening())

    async def close(self) -> None:
        """Stop listening and close the connection."""
        self._closing = True
        if self._watch:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()

    async def _connection(self) -> Any:
        import asyncpg

        if self._conn is None or self._conn.is_closed():
            conn = await asyncpg.connect(self._dsn)
            await conn.add_listener(CHANNEL, self._on_notify)
            if self._conn is not None:  # listening again after a gap: a forget may be lost
                self.on_forget(None)
            self._conn = conn
        return self._conn

    async def _keep_listening(self) -> None:
        """Reconnect the LISTEN connection when it drops."""
        while not self._closing:
            await asyncio.sleep(2.0)
            try:
                await self._connection()
            except Exception as exc:
                log.warning("LISTEN connection lost, retrying: %s", exc)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if message.get("r") == self.replica:
            return  # delivered locally already
        if "f" in message:
            self.on_forget([str(i) for i in message["f"] if isinstance(i, str)])
            return
        self.deliver(message.get("i", []), message.get("e", {}))


def _add(events: list[Event], new: Iterable[Event]) -> None:
    """Append each event of `new` not already in `events` (a repeated kick is one kick)."""
    for event in new:
        if event not in events:
            events.append(event)


def _payloads(replica: str, instance_ids: Sequence[str], event: Event) -> list[str]:
    """Split a fan-out into NOTIFY payloads under PostgreSQL's size limit. An event too big to
    share a payload with instance ids (a kick carrying a long script) goes without its tasks:
    the agents it wakes on other replicas list their tasks instead."""
    if len(json.dumps(event)) > MAX_EVENT:
        event = {k: v for k, v in event.items() if k != "tasks"}
    budget = MAX_PAYLOAD - 200 - len(json.dumps(event))
    payloads: list[str] = []
    batch: list[str] = []
    size = 0
    for iid in instance_ids:
        if batch and size + len(iid) + 3 > budget:
            payloads.append(json.dumps({"r": replica, "i": batch, "e": event}))
            batch, size = [], 0
        batch.append(iid)
        size += len(iid) + 3
    if batch:
        payloads.append(json.dumps({"r": replica, "i": batch, "e": event}))
    return payloads
