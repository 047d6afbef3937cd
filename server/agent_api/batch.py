"""Per-replica batched writes of the agent API: long-poll nonces, last-seen, delivery claims.

An idle fleet's requests are long-polls. Writing each poll's nonce and last-seen time in its own
transaction made idle cost one or two database writes per request; here a replica collects them
and writes everything at most once per `interval` (a lone request, with nothing flushed
recently, goes at once):

- Nonces: one multi-row ``INSERT … ON CONFLICT DO NOTHING RETURNING`` into the shared `nonces`
  table. A poll is parked only after its nonce came back as inserted, so the table's primary
  key still decides, across every replica, which single request a nonce belongs to: a replay on
  any replica is refused before it has any effect (docs/scale.md, Idle cost).
- Last-seen: one ``UPDATE … WHERE instance_id IN (…)`` for the instances heard from since the
  last flush, each at most once per SEEN_WRITE_INTERVAL.
- Delivery claims: a kick that carries its task goes out with that task only once the instance's
  row was marked delivered, by one conditional ``UPDATE … RETURNING`` per invocation and flush,
  and only while the row is active and not asked to stop. StopInvocation and the delivery are
  thus ordered by the database: a stop committed first makes the claim fail (the kick goes out
  without its task, the agent lists and finds nothing to run: Cancelled, never run); a claim
  committed first makes the stop a Stopping the agent sees when it lists (docs/scale.md).
  A claim holds an answer back, so it does not wait out the interval: it is written at once,
  or, while a flush is under way, with the claims that arrived meanwhile right after it (group
  commit). Nonces and last-seen ride along.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from server import model
from server.store import Store, access, instances, tasks
from server.store.conn import Conn

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.25  # seconds between two flushes of one replica
SEEN_WRITE_INTERVAL = 60_000  # ms between two last-seen writes of one instance


class ReplicaWrites:
    """The writes one replica batches, and the task that flushes them."""

    def __init__(self, store: Store, interval: float = FLUSH_INTERVAL) -> None:
        self.store = store
        self.interval = interval
        self._nonces: dict[str, tuple[int, asyncio.Future[bool]]] = {}
        self._seen: set[str] = set()
        # nonce key -> the heartbeat written with it, if the nonce is new: (instance id,
        # interval told, agent version)
        self._beats: dict[str, tuple[str, int, str]] = {}
        self._seen_written: dict[str, int] = {}  # instance id -> ms of its last last-seen write
        # invoke id -> instance id -> the answer waiting for its delivery claim
        self._delivered: dict[str, dict[str, asyncio.Future[bool]]] = {}
        self._wake: asyncio.Event | None = None
        self._urgent: asyncio.Event | None = None  # a claim waits: flush without the interval
        self._flusher: asyncio.Task[None] | None = None
        self._last = 0.0
        self._next_prune = 0.0
        self.flushes = 0  # transactions written (for the idle-cost figures)
        self.rows = 0  # rows written by them

    # --- what requests hand in ------------------------------------------------------------

    def claim_nonce(self, key: str, expires: int) -> asyncio.Future[bool]:
        """True once the nonce is stored as this request's; False when it was used before, on
        this replica or another. A nonce still waiting here is refused at once."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if key in self._nonces:
            future.set_result(False)
            return future
        self._nonces[key] = (expires, future)
        self._kick()
        return future

    def note_seen(self, instance_id: str, now_ms: int) -> None:
        """The instance was heard from: write its last-seen time unless written lately."""
        if now_ms - self._seen_written.get(instance_id, 0) > SEEN_WRITE_INTERVAL:
            self._seen_written[instance_id] = now_ms
            self._seen.add(instance_id)
            self._kick()

    def claim_beat(
        self, key: str, expires: int, instance_id: str, interval: int, version: str
    ) -> asyncio.Future[bool]:
        """A heartbeat: claim_nonce, and with a new nonce write the instance's last-seen time,
        the interval it was told and its agent version ("": unchanged). Written at once, as a
        delivery claim, and together with whatever queued meanwhile (group commit): one
        instance's beats or many instances', each flush is a few statements."""
        future = self.claim_nonce(key, expires)
        if not future.done():
            self._beats[key] = (instance_id, interval, version)
            self._kick(urgent=True)
        return future

    def claim_delivery(self, invoke_id: str, instance_id: str) -> asyncio.Future[bool]:
        """True once the invocation is marked delivered to the instance, so its kick may carry
        the task; False when the row ended or was asked to stop meanwhile (or the write failed):
        the kick then goes without it and the agent lists its tasks."""
        waiting = self._delivered.setdefault(invoke_id, {})
        future = waiting.get(instance_id)
        if future is None:
            future = waiting[instance_id] = asyncio.get_running_loop().create_future()
            self._kick(urgent=True)
        return future

    # --- flushing --------------------------------------------------------------------------

    def _kick(self, urgent: bool = False) -> None:
        if self._flusher is None or self._flusher.done():
            self._wake, self._urgent = asyncio.Event(), asyncio.Event()
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        assert self._wake is not None and self._urgent is not None
        self._wake.set()
        if urgent:
            self._urgent.set()

    async def _flush_loop(self) -> None:
        assert self._wake is not None and self._urgent is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            delay = self._last + self.interval - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):  # cut short by a claim
                    async with asyncio.timeout(delay):
                        await self._urgent.wait()
            self._urgent.clear()
            self._last = time.monotonic()
            await self.flush()

    async def flush(self) -> None:
        """Write everything collected so far in one transaction."""
        nonces, self._nonces = self._nonces, {}
        seen, self._seen = sorted(self._seen), set()
        beats, self._beats = self._beats, {}
        delivered, self._delivered = self._delivered, {}
        if not (nonces or seen or delivered):
            return
        now_ms = model.now_ms()
        items = [(key, expires) for key, (expires, _) in nonces.items()]
        beaten: dict[str, tuple[int, str]] = {}  # instance id -> its newest beat written

        async def _tx(conn: Conn) -> tuple[set[str], dict[str, set[str]]]:
            fresh = await access.use_nonces(conn, items) if items else set()
            beaten.clear()
            for key, (instance_id, interval, version) in beats.items():  # in arrival order
                if key in fresh:  # a replay writes nothing
                    older = beaten.get(instance_id, (0, ""))
                    beaten[instance_id] = (interval, version or older[1])
            if seen or beaten:
                await instances.record_seen(conn, seen, beaten, now_ms)
            claimed = {
                invoke_id: await tasks.claim_delivered(conn, invoke_id, sorted(waiting))
                for invoke_id, waiting in delivered.items()
            }
            return fresh, claimed

        try:
            fresh, claimed = await self.store.write(_tx, durable=False)
        except Exception as exc:
            log.warning("batched agent writes failed (%d nonces refused): %s", len(nonces), exc)
            self._seen.update(seen)  # tried again with the next flush
            claimed = {}  # those kicks go without their tasks: the agents list them
            for _, future in nonces.values():
                if not future.done():
                    future.set_exception(exc)
        else:
            self.flushes += 1
            self.rows += len(items) + len(seen) + len(beats)
            self.rows += sum(len(w) for w in delivered.values())
            _settle((key in fresh, future) for key, (_, future) in nonces.items())
            self._seen_written.update(dict.fromkeys(beaten, now_ms))
            self._forget_old_seen(now_ms)
        for invoke_id, waiting in delivered.items():
            ok = claimed.get(invoke_id, set())
            _settle((iid in ok, future) for iid, future in waiting.items())

    def _forget_old_seen(self, now_ms: int) -> None:
        """Drop throttle entries old enough to no longer matter (instances that left)."""
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + SEEN_WRITE_INTERVAL / 1000
        cutoff = now_ms - 2 * SEEN_WRITE_INTERVAL
        stale = [iid for iid, when in self._seen_written.items() if when < cutoff]
        for iid in stale:
            del self._seen_written[iid]

    def stats(self) -> dict[str, Any]:
        return {"flushes": self.flushes, "rows": self.rows}

    async def close(self) -> None:
        """Write what is pending, then stop the flusher."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()


def _settle(outcomes: Iterable[tuple[bool, asyncio.Future[bool]]]) -> None:
    """Answer the requests waiting on a flush, each with its result."""
    for result, future in outcomes:
        if not future.done():
            future.set_result(result)
