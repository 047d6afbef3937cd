"""Ed25519 work of the agent API on a thread of its own, beside the event loop.

Checking a request's signature (about 105 µs on this 2-core box) and signing the answer
(about 35 µs) are the largest single costs of a signed agent request, which costs the loop
~450 µs in all (docs/scale.md, Ingestion). The cryptography library releases the GIL while it
runs, so a second thread does that work while the loop parses, writes and answers other
requests. The loop hands each job to the thread through a queue and awaits a future; the thread
runs the jobs queued meanwhile, up to BATCH of them, and hands their outcomes back in one wake-up
of the loop, so a burst costs one cross-thread wake-up per batch, not one per request, and no
answer waits for the whole burst.

Failing closed: a signature check that raises is a bad signature for the request that asked; a
thread that ends fails the callers still waiting on it, and later callers are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.protocol import sign_response, signature_valid

log = logging.getLogger(__name__)

R = TypeVar("R")
BATCH = 32  # jobs whose outcomes go back to the loop together (a burst is not held back whole)
_Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]


class CryptoThread:
    """One thread for one event loop's signature work, started on first use, ended by `close`.

    A caller on another event loop than the first (the same state reused after its loop ended)
    gets its work done inline.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def valid(self, key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
        """Whether `signature` signs `message` under `key` (a wrong-length one does not)."""
        return await self.call(_checked, key, signature, message)

    async def sign_response(
        self, key: Ed25519PrivateKey, *args: Any, **kwargs: Any
    ) -> dict[str, str]:
        """common.protocol.sign_response, on the thread."""
        return await self.call(lambda: sign_response(key, *args, **kwargs))

    async def call(self, fn: Callable[..., R], *args: Any) -> R:
        """fn(*args) on the thread; its result, or its exception raised here."""
        if self._closed or (self._thread is not None and not self._thread.is_alive()):
            raise RuntimeError("the agent API's crypto thread is closed")
        loop = asyncio.get_running_loop()
        if self._thread is None:
            self._loop = loop
            self._thread = threading.Thread(target=self._run, name="agent-crypto", daemon=True)
            self._thread.start()
        elif loop is not self._loop:
            return fn(*args)
        future: asyncio.Future[R] = loop.create_future()
        self._jobs.put((fn, args, future))
        return await future

    def close(self) -> None:
        """End the thread after the jobs already queued (their outcomes may go unread)."""
        self._closed = True
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=5)

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        try:
            while self._serve_batch(loop):
                pass
        finally:  # however the thread ends, nobody is left waiting on it
            self._closed = True
            self._fail_queued(loop)

    def _serve_batch(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Run the next job and up to BATCH - 1 queued behind it; hand their outcomes to the loop
        at once. False once told to stop (or the loop is gone)."""
        job = self._jobs.get()
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        while job is not None:
            fn, args, future = job
            try:
                outcomes.append((future, fn(*args), None))
            except Exception as exc:
                outcomes.append((future, None, exc))
            except BaseException as exc:  # the thread ends: its caller hears of it, not the loop
                stopped = RuntimeError(f"the agent API's crypto thread stopped: {exc!r}")
                outcomes.append((future, None, stopped))
                job = None
                break
            if len(outcomes) >= BATCH:
                break
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
        if outcomes:
            try:
                loop.call_soon_threadsafe(_settle, outcomes)
            except RuntimeError:  # the loop is closed: nobody waits for these
                return False
        return job is not None

    def _fail_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        gone = RuntimeError("the agent API's crypto thread stopped")
        left: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                left.append((job[2], None, gone))
        if left:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, left)


def _checked(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        return signature_valid(key, signature, message)
    except Exception as exc:  # fail closed: the request is refused, not the thread
        log.warning("signature check failed: %s", exc)
        return False


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        if future.done():  # its request was cancelled meanwhile
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
