"""A bounded task pool: at most `max_running` jobs at once and `max_queued` waiting.

Threads are started on demand and end when the queue is empty, so an idle agent holds none.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)


class TaskPool:
    """Run callables on worker threads, refusing work beyond the queue bound."""

    def __init__(self, max_running: int = 10, max_queued: int = 50) -> None:
        self.max_running = max_running
        self.max_queued = max_queued
        self._lock = threading.Lock()
        self._queue: deque[tuple[str, Callable[[], None]]] = deque()
        self._workers = 0
        self._running: set[str] = set()
        self._queued: set[str] = set()
        self._idle = threading.Condition(self._lock)

    def submit(self, key: str, job: Callable[[], None]) -> bool:
        """Queue `job` under `key`; False when the pool is full (the caller reports it)."""
        with self._lock:
            if key in self._running or key in self._queued:
                return True  # already here: accepted once, not twice
            outstanding = len(self._queue) + len(self._running)
            if outstanding >= self.max_running + self.max_queued:
                return False
            self._queue.append((key, job))
            self._queued.add(key)
            if self._workers < self.max_running:
                self._workers += 1
                threading.Thread(target=self._work, name="task-worker", daemon=True).start()
        return True

    def holds(self, key: str) -> bool:
        """True while `key` is queued or running."""
        with self._lock:
            return key in self._running or key in self._queued

    def holds_prefix(self, prefix: str) -> bool:
        """True while any key starting with `prefix` is queued or running."""
        with self._lock:
            return any(k.startswith(prefix) for k in self._running | self._queued)

    def counts(self) -> tuple[int, int]:
        """(running, queued)."""
        with self._lock:
            return len(self._running), len(self._queue)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._workers, timeout)

    def _work(self) -> None:
        """Worker loop: take jobs until the queue is empty, then end."""
        while True:
            with self._lock:
                if not self._queue:
                    self._workers -= 1
                    self._idle.notify_all()
                    return
                key, job = self._queue.popleft()
                self._queued.discard(key)
                self._running.add(key)
            try:
                job()
            except Exception:  # a job's bug must not kill the pool
                log.exception("task job %s failed", key)
            finally:
                with self._lock:
                    self._running.discard(key)
