"""Wake-ups for long-polling agents: in-process waiters, fanned out across replicas.

`Notifier.park()` parks a long-poll on one future (no task, no database connection held while
it waits). `publish()` delivers an event to local waiters at once and, with PostgreSQL, sends it
through NOTIFY so waiters on every other replica wake too (LISTEN on one dedicated asyncpg
connection per replica); the workers of one SQLite server (`serve --workers N`) send it to each
other over their local bus instead (server/bus.py). Events for an instance that is between two
polls are buffered briefly so the next poll returns at once. Each instance has at most one
parked poll per replica: a new poll dismisses the older one (a restarted agent's dead poll),
and a poll whose client went away (cancelled, or told by its `gone` future) hands its events
back to the buffer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence, Set
from typing import Any

from server import bus
from server.bus import LocalBus

log = logging.getLogger(__name__)

CHANNEL = "assist_notify"
PENDING_TTL = 90.0  # seconds an undelivered event is kept for the next poll
MAX_BUFFERED = 32  # undelivered events kept for one instance (then: one kick to list tasks)
SYNC_KICK = {"type": "task"}  # a kick without its tasks: the agent lists them (and its stops)
LISTED_KINDS = ("task", "stop")  # what a task listing answers
MAX_PAYLOAD = 7000  # bytes per NOTIFY (PostgreSQL's limit is 8000)
MAX_EVENT = 3000  # bytes of an event sent along to other replicas as it is
NOTIFY_LIMITS = (MAX_PAYLOAD, MAX_EVENT)
BUS_LIMITS = (bus.MAX_MESSAGE, bus.MAX_MESSAGE // 2)  # the workers' bus takes bigger messages
# Parked polls woken per turn of the event loop. A kick to 10,000 agents woke them all in one
# turn, and every database answer an InvokeCommand waited on (PostgreSQL: a dozen round trips
# a call) queued behind their 10,000 answers; in turns of this many, it waits for at most one
# turn's worth (docs/scale.md, Fan-out).
WAKE_BATCH = 16

Event = dict[str, Any]


class Delivery:
    """One event as handed to the instances of one `deliver` call: the same object for all of
    them, so an answer built for it once (one signature for every agent a kick wakes:
    server/agent_api/longpoll.py) serves them all. `audience` names those instances."""

    __slots__ = ("audience", "claimed", "event", "shared")

    def __init__(
        self, event: Event, audience: tuple[str, ...], claimed: Set[str] = frozenset()
    ) -> None:
        self.event = event
        self.audience = audience
        self.claimed = claimed  # instances whose carried tasks are marked delivered already
        self.shared: Any = None  # the answer built for the whole audience, once


class _Waiter:
    """One parked long-poll: its wake-up and the deliveries handed to it while parked."""

    __slots__ = ("events", "woken")

    def __init__(self, woken: asyncio.Future[None]) -> None:
        self.events: list[Delivery] = []
        self.woken = woken

    def wake(self) -> None:
        if not self.woken.done():
            self.woken.set_result(None)


class _Slot:
    """Buffered deliveries and the parked long-poll of one instance."""

    __slots__ = ("events", "instance_id", "stamp", "waiter")

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.events: list[Delivery] = []  # for the next poll: nobody was parked
        self.stamp = 0.0
        self.waiter: _Waiter | None = None  # at most one: the newest poll


class Notifier:
    """Per-replica hub of long-poll waiters."""

    def __init__(self, pg_dsn: str | None = None, bus_dir: str | None = None) -> None:
        self.replica = uuid.uuid4().hex
        self._slots: dict[str, _Slot] = {}
        self._dsn = pg_dsn
        self._bus = LocalBus(bus_dir, self.replica, self._on_message) if bus_dir else None
        self._conn: Any = None
        self._watch: asyncio.Task[None] | None = None
        self._closing = False
        self._lock: asyncio.Lock | None = None
        # drops cached instance keys: the ids named, or every one (None) after a gap in LISTEN
        self.on_forget: Callable[[list[str] | None], None] = lambda _ids: None
        # polls handed a delivery, not yet woken; while it holds any, a _wake_some is scheduled
        self._to_wake: collections.deque[_Waiter] = collections.deque()

    # --- local delivery ------------------------------------------------------------------

    def deliver(
        self, instance_ids: Iterable[str], event: Event, claimed: Set[str] = frozenset()
    ) -> None:
        """Hand `event` to each instance's parked poll, or keep it for its next poll.
        `claimed`: instances whose carried tasks the caller marked delivered already."""
        audience = tuple(instance_ids)
        delivery = Delivery(event, audience, claimed)
        now = time.monotonic()
        idle = not self._to_wake  # no _wake_some is scheduled
        for iid in audience:
            slot = self._slots.get(iid)
            if slot is None:
                slot = self._slots[iid] = _Slot(iid)
            if slot.waiter is not None:
                _add(slot.waiter.events, [delivery])
                self._to_wake.append(slot.waiter)
                continue
            _buffer(slot, [delivery], now)
        if idle and self._to_wake:
            asyncio.get_running_loop().call_soon(self._wake_some)

    def _wake_some(self) -> None:
        """Wake WAKE_BATCH of the polls handed deliveries, the rest in the loop's next turns
        (what their deliveries hold is theirs already: a poll that ends meanwhile, by its
        timeout, its client leaving or a newer poll, answers or keeps it the same way)."""
        queue = self._to_wake
        for _ in range(min(WAKE_BATCH, len(queue))):
            queue.popleft().wake()
        if queue:
            asyncio.get_running_loop().call_soon(self._wake_some)

    async def wait(self, instance_id: str, timeout: float) -> list[Event]:
        """The events of `park` (no client to watch: a cancel is the client going away)."""
        return [d.event for d in await self.park(instance_id, timeout)]

    async def park(
        self, instance_id: str, timeout: float, gone: asyncio.Future[Any] | None = None
    ) -> list[Delivery]:
        """Return pending deliveries for the instance as soon as there are any, or [] on
        timeout, or [] once `gone` (the client's disconnect) is done: its deliveries stay
        buffered for the next poll.

        One live poll per instance: a new poll dismisses the one parked before it (an agent
        that restarted leaves its dead predecessor's poll behind, and the server does not see
        that client go). The dismissed poll answers [] and hands whatever it had been given to
        the new one, so no event is answered to a dead connection.
        """
        slot = self._slots.get(instance_id)
        if slot is None:
            slot = self._slots[instance_id] = _Slot(instance_id)
        if slot.waiter is not None:
            self._dismiss(slot, slot.waiter)
        events = self._take_buffered(slot)
        if not events:
            events = await self._park(slot, timeout, gone)
        if slot.waiter is None and not slot.events and self._slots.get(instance_id) is slot:
            del self._slots[instance_id]  # not a newer slot: a dismissed poll may end late
        return events

    async def _park(
        self, slot: _Slot, timeout: float, gone: asyncio.Future[Any] | None
    ) -> list[Delivery]:
        """Wait as the instance's poll: one future, woken by a delivery, a newer poll, the
        timeout or the client's disconnect (no task of its own: a 10,000-agent kick wakes
        10,000 of these). A cancel, or the client going, gives the deliveries back."""
        loop = asyncio.get_running_loop()
        me = slot.waiter = _Waiter(loop.create_future())
        timer = loop.call_later(timeout, me.wake)

        def client_left(_done: Any) -> None:
            self._dismiss(slot, me)

        if gone is not None:
            gone.add_done_callback(client_left)
        try:
            await me.woken
        except asyncio.CancelledError:  # the client went away: keep its events for the next
            self._dismiss(slot, me)
            raise
        finally:
            timer.cancel()
            if gone is not None:
                gone.remove_done_callback(client_left)
            if slot.waiter is me:
                slot.waiter = None
        return me.events

    def give_back(self, instance_id: str, events: list[Delivery]) -> None:
        """Return deliveries a poll took but could not answer (its client left) for the next
        poll (each now for this instance alone)."""
        for delivery in events:
            self.deliver([instance_id], delivery.event)

    @staticmethod
    def _dismiss(slot: _Slot, waiter: _Waiter) -> None:
        """Wake `waiter` empty-handed, moving its deliveries to the buffer for the next poll."""
        if waiter.events:
            _buffer(slot, waiter.events, time.monotonic())
            waiter.events = []
        if slot.waiter is waiter:
            slot.waiter = None
        waiter.wake()

    @staticmethod
    def _take_buffered(slot: _Slot) -> list[Delivery]:
        """The buffered deliveries (if not stale), removed from the buffer."""
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

    def parked(self, instance_ids: Iterable[str]) -> set[str]:
        """Those of the instances whose long-poll is parked on this replica now."""
        slots = self._slots
        return {i for i in instance_ids if (slot := slots.get(i)) and slot.waiter is not None}

    async def publish(
        self, instance_ids: Sequence[str], event: Event, claimed: Set[str] = frozenset()
    ) -> None:
        """Deliver locally now, then tell the other replicas (or workers).
        A NOTIFY that fails is logged: the other replicas' agents list their tasks anyway.
        `claimed` (see deliver) holds here only: other replicas claim as they answer."""
        self.deliver(instance_ids, event, claimed)
        if instance_ids:
            await self._tell_others(
                lambda limits: _payloads(self.replica, instance_ids, event, limits)
            )

    async def forget(self, instance_ids: Sequence[str]) -> None:
        """Make every replica drop its cached keys of these instances (deregistered, or
        registered anew): here at once, on the others through NOTIFY or the workers' bus. A
        message that fails leaves the others' caches to expire (server/state.py
        KEY_CACHE_TTL)."""
        self.on_forget(list(instance_ids))
        if instance_ids:
            message = json.dumps({"r": self.replica, "f": list(instance_ids)})
            await self._tell_others(lambda _limits: [message])

    async def _tell_others(self, payloads: Callable[[tuple[int, int]], list[str]]) -> None:
        """Send the payloads built for the carrier's limits to the other workers (the bus) or
        replicas (NOTIFY); a lone SQLite server builds none."""
        if self._bus is not None:
            await self._bus.send(payloads(BUS_LIMITS))
        elif self._dsn is not None:
            await self._notify(payloads(NOTIFY_LIMITS))

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
        """Open the LISTEN connection (PostgreSQL) and watch it, or join the workers' bus."""
        if self._bus is not None:
            self._bus.start()
        if self._dsn is None:
            return
        await self._connection()
        self._watch = asyncio.create_task(self._keep_listening())

    async def close(self) -> None:
        """Stop listening and close the connection (or leave the bus)."""
        self._closing = True
        if self._bus is not None:
            self._bus.close()
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
        self._on_message(payload)

    def _on_message(self, payload: str) -> None:
        """A kick or a forget from another replica (NOTIFY) or worker (the bus)."""
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


def _buffer(slot: _Slot, new: list[Delivery], now: float) -> None:
    """Keep `new` for the instance's next poll. Past MAX_BUFFERED events (an instance that does
    not poll while kicks keep coming: offline, or stuck), its kicks and stops become one kick
    without tasks, on which the agent lists its tasks and stops; update and settings events
    stay. Unbounded, the buffer grew by one event per kick for as long as kicks came less than
    PENDING_TTL apart, and each kick compared itself with all of them."""
    if now - slot.stamp > PENDING_TTL:
        slot.events = []
    _add(slot.events, new)
    slot.stamp = now
    if len(slot.events) > MAX_BUFFERED:
        kept = [d for d in slot.events if d.event.get("type") not in LISTED_KINDS]
        sync = Delivery(dict(SYNC_KICK), (slot.instance_id,))
        slot.events = [*kept[-(MAX_BUFFERED // 2) :], sync]


def _add(deliveries: list[Delivery], new: Iterable[Delivery]) -> None:
    """Append each delivery of `new` whose event is not already in `deliveries` (a repeated
    kick is one kick)."""
    for delivery in new:
        if all(d.event != delivery.event for d in deliveries):
            deliveries.append(delivery)


def _payloads(
    replica: str, instance_ids: Sequence[str], event: Event, limits: tuple[int, int]
) -> list[str]:
    """Split a fan-out into payloads under `limits`: (bytes per payload, bytes of an event sent
    as it is). An event too big to share a payload with instance ids (a kick carrying a long
    script) goes without its tasks: the agents it wakes on other replicas list their tasks
    instead."""
    max_payload, max_event = limits
    if len(json.dumps(event)) > max_event:
        event = {k: v for k, v in event.items() if k != "tasks"}
    budget = max_payload - 200 - len(json.dumps(event))
    payloads: list[str] = []
    batch: list[str] = []
    size = 0
    for iid in instance_ids:
        cost = len(json.dumps(iid)) + 2  # quoted, escaped, and ", " before the next
        if batch and size + cost > budget:
            payloads.append(json.dumps({"r": replica, "i": batch, "e": event}))
            batch, size = [], 0
        batch.append(iid)
        size += cost
    if batch:
        payloads.append(json.dumps({"r": replica, "i": batch, "e": event}))
    return payloads
