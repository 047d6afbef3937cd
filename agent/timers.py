"""The agent's clocks: one timer thread for everything scheduled, and jittered retry backoff.

Timed invocations and scheduled updates are callbacks on one `Timers` thread that sleeps on a
condition until the earliest is due, so an idle agent uses no CPU (docs/schedules.md).
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class Backoff:
    """Capped exponential backoff; each delay is drawn from [d/2, d]."""

    initial: float = 1.0  # seconds
    cap: float = 30.0  # seconds; each delay is jittered so a fleet spreads out
    attempt: int = 0

    def next_delay(self) -> float:
        """The delay before the next try; grows until `cap`."""
        delay = min(self.cap, self.initial * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        """Start over after a success."""
        self.attempt = 0


class Timers:
    """One thread that calls functions at wall-clock times (Unix seconds)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], object]]] = []
        self._cancelled: set[int] = set()
        self._seq = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="timers", daemon=True)

    def start(self) -> None:
        """Start the timer thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the timer thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def call_at(self, when: float, fn: Callable[[], object]) -> int:
        """Call `fn` at `when`; returns a handle for `cancel`."""
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (when, self._seq, fn))
            self._cond.notify_all()
            return self._seq

    def cancel(self, handle: int) -> None:
        """Forget a pending call."""
        with self._cond:
            self._cancelled.add(handle)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    if self._heap and self._heap[0][0] <= time.time():
                        break
                    timeout = self._heap[0][0] - time.time() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                _, handle, fn = heapq.heappop(self._heap)
                if handle in self._cancelled:
                    self._cancelled.discard(handle)
                    continue
            try:
                fn()
            except Exception:
                log.exception("timer callback failed")
