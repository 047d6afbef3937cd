"""The outbox's sender: one thread that delivers queued reports until each is acknowledged.

Due reports go in order, several in one request (`task/reports`, docs/agent-protocol.md)
where the server takes batches and one by one where it does not. While the server cannot be
reached the rest waits, with a capped backoff, until a request gets through again (or the
daemon says it is connected). At close it flushes for a few seconds more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.client import AgentClient, ServerRefusedError, ServerUnavailableError
from agent.outbox import AgentDatabase, Report, batches
from agent.timers import Backoff
from common.protocol import ResponseRefusedError

log = logging.getLogger(__name__)

BATCH_RETRY = 3600.0  # seconds before a server that took no batch of reports is asked again


class ReportSender:
    """Delivers the reports of `store` through `client`; `set_connected(False)` when the server
    cannot be reached."""

    def __init__(
        self, store: AgentDatabase, client: AgentClient, set_connected: Callable[[bool], None]
    ) -> None:
        self.store = store
        self.client = client
        self._set_connected = set_connected
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._hold_until = 0.0  # wall time before which an unreachable server is not asked
        self._flush_seconds = 3.0  # how long the loop flushes after close (close sets it)
        self._batch_refused_until = 0.0  # monotonic time before which reports go one by one

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="outbox", daemon=True)
        self._thread.start()

    def close(self, flush_seconds: float) -> None:
        """Stop after flushing what is due for up to `flush_seconds`."""
        self._flush_seconds = flush_seconds
        self._closing.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(flush_seconds + self.client.timeout)

    def wake(self, force: bool = False) -> None:
        """Look at the outbox again; `force`: the server is back, stop holding off."""
        with self.store.changed:
            if force:
                self._hold_until = 0.0
            self.store.changed.notify_all()

    def _loop(self) -> None:
        """Deliver queued reports in order until each is acknowledged; flush once at close."""
        backoff = Backoff()
        changed = self.store.changed
        while not self._closing.is_set():
            with changed:
                hold = self._hold_until - time.time()
                if hold > 0:
                    changed.wait(hold)
                    continue
            if not self.send_due():
                with changed:
                    self._hold_until = time.time() + backoff.next_delay()
                continue
            backoff.reset()
            with changed:
                if self._closing.is_set():
                    break
                nxt = self.store.next_retry_time()
                if nxt is None:
                    changed.wait()
                elif nxt > time.time():
                    changed.wait(nxt - time.time())
        deadline = time.time() + self._flush_seconds
        while self.store.pending_count() and time.time() < deadline:
            if not self.send_due():
                break

    def send_due(self) -> bool:
        """Send every due report; False when the server is unreachable (the rest waits).

        Several due reports go in batches (one request each: task/reports) unless the server
        lately said it takes none; one goes on its own."""
        while True:
            reports = self.store.due_reports(time.time())
            if not reports:
                return True
            try:
                for group in batches(reports):
                    self._send_batch(group)
            except (ServerUnavailableError, ResponseRefusedError) as exc:
                log.info("reports not delivered: %s", exc)
                self._set_connected(False)
                return False

    def _send_one(self, report: Report) -> ServerRefusedError | None:
        """Send one report on its own; the server's refusal of it, if any."""
        try:
            self.client.post_report(report.path, report.body)
        except ServerRefusedError as exc:
            return exc
        return None

    def _send_batch(self, group: list[Report]) -> None:
        """Send a group in one request; one by one when the server refuses the batch as such
        (an older server answers NotFound: batches are left alone for BATCH_RETRY seconds)."""
        if len(group) == 1 or time.monotonic() < self._batch_refused_until:
            for report in group:
                self._settle(report, self._send_one(report))
            return
        try:
            answers = self.client.post_reports([(r.path, r.body) for r in group])
        except ServerRefusedError as exc:
            if exc.status == 404:
                log.info("the server takes no batched reports (%s): sending them one by one", exc)
                self._batch_refused_until = time.monotonic() + BATCH_RETRY
            for report in group:
                self._settle(report, self._send_one(report))
            return
        for report, answer in zip(group, answers):
            refusal = None
            if answer.get("ok") is False:
                status = answer.get("status")
                code, message = str(answer.get("code") or ""), str(answer.get("message") or "")
                refusal = ServerRefusedError(
                    status if isinstance(status, int) else 400, code, message
                )
            self._settle(report, refusal)

    def _settle(self, report: Report, refusal: ServerRefusedError | None) -> None:
        """Forget a report the server took (or refused for good); retry a retryable refusal."""
        if refusal is not None and refusal.retryable:
            self.store.postpone(report.id, time.time() + min(60, 2**report.attempts))
            return
        if refusal is not None:
            log.error("server refused report %s for good, dropping it: %s", report.key, refusal)
        self.store.acknowledge(report.id)
