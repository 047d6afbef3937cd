"""HTTP with a bound on every wait: a deadline for headers, a low-speed rule for bodies.

Socket timeouts bound each read, not their sum, so a server trickling bytes could hold a client
for hours; these helpers give every wait on a mirror or the metadata service a total bound
(docs/SECURITY.md, "slow mirror"). Used by the fetcher (common/fetch.py) and region detection
(common/mirrors.py).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests
import urllib3

from common.config import PROXY_ENV
from common.errors import DownloadError

DOWNLOAD_HINT = "check the network and proxy (ALIYUN_ASSIST_PROXY), or pick another mirror"
_DOWNLOAD_HINT = DOWNLOAD_HINT


class Pace:
    """curl's low-speed limit: fewer than `min_speed` bytes/s over a `window` is a stall.

    A read timeout alone never fires for a server that trickles one byte a second; this does,
    so every wait on a body has a bound (docs/SECURITY.md, "slow mirror").
    """

    def __init__(
        self, window: float, min_speed: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window  # seconds
        self.min_bytes = int(min_speed * window)
        self.clock = clock
        self.since = clock()
        self.got = 0

    def too_slow(self, received: int) -> bool:
        """Count `received` bytes; True once a whole window brought fewer than the minimum."""
        self.got += received
        now = self.clock()
        if now - self.since < self.window:
            return False
        slow = self.got < self.min_bytes
        self.since, self.got = now, 0
        return slow


def read_chunk(
    response: requests.Response, amount: int, pace: Pace | None = None
) -> tuple[bytes, str | None]:
    """Read up to `amount` body bytes; on a transport error or a stall (`pace`) return what
    came and the error."""
    buffer = bytearray()
    try:
        first = response.raw.read1(amount, decode_content=False)
        if pace is not None and pace.too_slow(len(first)):
            return first, f"slower than {pace.min_bytes} bytes in {pace.window:g} s"
        if len(first) == amount or not first:
            return first, None  # the usual case: one read, no copy
        buffer += first
        while len(buffer) < amount:
            piece = response.raw.read1(amount - len(buffer), decode_content=False)
            if not piece:
                break
            buffer += piece
            if pace is not None and pace.too_slow(len(piece)):
                return bytes(buffer), f"slower than {pace.min_bytes} bytes in {pace.window:g} s"
    except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
        return bytes(buffer), type(exc).__name__
    return bytes(buffer), None


class _DaemonThreads:
    """Daemon threads that each run one job at a time and wait for the next once done.

    get_with_deadline needs a thread per request it may abandon (daemon: one left hanging on
    a dead mirror must not hold the process at exit); starting one per request costs a mirror
    sync of hundreds of files dearly, as a new thread waits for the GIL behind the busy ones.
    A thread whose job hangs is simply not offered again; at most MAX_IDLE wait idle, each for
    at most IDLE_SECONDS (a long-lived agent does not keep a sync's threads for good).
    """

    MAX_IDLE = 16
    IDLE_SECONDS = 30.0

    def __init__(self) -> None:
        self._idle: list[queue.SimpleQueue[Callable[[], None]]] = []
        self._lock = threading.Lock()

    def run(self, job: Callable[[], None]) -> None:
        """Run `job` on an idle thread, or on a new one if none is idle."""
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(
                target=self._serve, args=(inbox,), name="http-headers", daemon=True
            ).start()
        inbox.put(job)

    def _serve(self, inbox: queue.SimpleQueue[Callable[[], None]]) -> None:
        job = inbox.get()
        while True:
            job()  # the job reports its own outcome and errors
            with self._lock:
                if len(self._idle) >= self.MAX_IDLE:
                    return
                self._idle.append(inbox)
            try:
                job = inbox.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:  # nobody took it meanwhile: leave
                        self._idle.remove(inbox)
                        return
                job = inbox.get()  # run() took this inbox just now: its job is on the way


_HEADER_THREADS = _DaemonThreads()


def get_with_deadline(
    session: requests.Session, url: str, total: float, **kwargs: Any
) -> requests.Response:
    """session.get(url, **kwargs) that returns or fails within `total` seconds (with its headers).

    Socket timeouts bound each read, not their sum: a server sending a header byte per second
    would hold the request for hours (docs/SECURITY.md, "slow mirror"). The request runs on a
    daemon thread; one that misses the deadline raises requests.Timeout here, is left to
    finish on its own, and its response is closed then. Use stream=True: the body is the
    caller's to read under its own bound.
    """
    outcome: list[requests.Response | Exception] = []
    settled = threading.Lock()
    finished = threading.Event()

    def run() -> None:
        try:
            result: requests.Response | Exception = session.get(url, **kwargs)
        except Exception as exc:  # handed to the caller's thread below
            result = exc
        with settled:
            if finished.is_set():  # the caller gave up on this request
                if isinstance(result, requests.Response):
                    result.close()
                return
            outcome.append(result)
            finished.set()

    _HEADER_THREADS.run(run)
    finished.wait(total)
    with settled:
        if not outcome:
            finished.set()
            raise requests.Timeout(f"no complete response headers from {url} in {total:g} s")
    result = outcome[0]
    if isinstance(result, Exception):
        raise result
    return result


def read_small_body(response: requests.Response, max_bytes: int, deadline: float) -> bytes:
    """The whole (small) body of a streamed response by `deadline` (time.monotonic seconds).

    Each read returns as soon as any bytes arrive, so a server trickling a byte at a time
    cannot hold the caller past the deadline by more than one read timeout.
    """
    buffer = bytearray()
    while True:
        if time.monotonic() > deadline:
            raise DownloadError(
                f"{response.url}: no complete answer in time ({len(buffer)} bytes)",
                hint=_DOWNLOAD_HINT,
            )
        try:
            piece = response.raw.read1(max_bytes + 1 - len(buffer), decode_content=False)
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
            raise DownloadError(f"{response.url}: {type(exc).__name__}: {exc}") from exc
        if not piece:
            return bytes(buffer)
        buffer += piece
        if len(buffer) > max_bytes:
            raise DownloadError(f"{response.url}: answer larger than {max_bytes} bytes")


def resolve_proxies(
    proxy: str | None, env: Mapping[str, str] | None = None
) -> dict[str, str] | None:
    """Explicit proxy, else ALIYUN_ASSIST_PROXY; None lets requests use the standard env vars."""
    env = os.environ if env is None else env
    chosen = proxy or env.get(PROXY_ENV) or None
    return {"http": chosen, "https": chosen} if chosen else None
