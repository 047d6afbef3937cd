"""The garbage collector's full collections, on the server's own schedule.

With 10,000 parked long-polls the server tracks a few million objects, and CPython starts a full
collection whenever the objects that reached the oldest generation have grown by a quarter since
the last one. Parked polls are exactly such objects: during a 10,000-agent fan-out benchmark a
full collection ran every one to two seconds, 0.35–0.56 s each (a `gc.callbacks` log of the
server, docs/scale.md Fan-out), and a kick that arrived during one waited for it.

Young collections stay automatic: the cycles of a request that ended young are freed there.
Full collections run every FULL_INTERVAL seconds instead (and after a wave of closed
connections: common/connguard.py MemoryTrimmer), so cyclic garbage that grew old waits at most
that long, and a fan-out meets a full collection about once in FULL_INTERVAL seconds of them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

FULL_INTERVAL = 60.0  # seconds between two full collections
_NEVER = 1 << 30  # a third threshold the collector's own count never reaches

# schedules running in this process (several apps in one test process), and the thresholds
# from before the first of them
_active = 0
_saved: tuple[int, int, int] | None = None


class FullCollections:
    """Automatic full collections off (`start`), one every `interval` seconds (`run`), and the
    thresholds as they were once the last schedule of the process stops (`stop`)."""

    def __init__(self, interval: float = FULL_INTERVAL) -> None:
        self.interval = interval
        self.runs = 0
        self._started = False

    def start(self) -> None:
        global _active, _saved
        young, middle, old = gc.get_threshold()
        if old == 0:  # a collector without generations to tune (CPython's incremental one)
            log.info("full collections left to the interpreter: it has no third threshold")
            return
        if _active == 0:
            _saved = (young, middle, old)
            gc.set_threshold(young, middle, _NEVER)
        _active += 1
        self._started = True

    def stop(self) -> None:
        global _active
        if not self._started:
            return
        self._started = False
        _active -= 1
        if _active == 0 and _saved is not None:
            gc.set_threshold(*_saved)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.collect()

    def collect(self) -> None:
        began = time.perf_counter()
        gc.collect()
        took = time.perf_counter() - began
        self.runs += 1
        if took > 1.0:
            log.warning("a full garbage collection took %.1f s", took)
