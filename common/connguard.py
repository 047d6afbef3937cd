"""Slow-loris guard for the uvicorn servers (assist-server serve, assist-mirror serve).

uvicorn times out a keep-alive connection only after a response: a connection that never
finishes its request headers (or its body) holds a file descriptor forever, and ~1,000 of them
stop a server from accepting anyone (docs/SECURITY.md, "slow-loris"). This module adds, per
connection, a deadline for each phase of a request:

- ``wait``: from connect (or the first byte of a keep-alive request) until the headers are in;
- ``body``: from the headers until the body is in;
- ``idle``: after a response, until the next request starts (keep-alive);
- ``app``: the application is working on a complete request: no deadline (a long-poll may wait);
- ``send``: a response waits on a client that does not read it (the transport paused writing):
  the body deadline again, so a "slow read" cannot hold a connection either.

It also bounds the connections per process, below the file-descriptor limit: when the bound is
reached, the connection that has waited longest in a phase the client controls (wait, body,
idle) is closed to make room, so a flood of stalled sockets cannot starve real clients. Only if
every connection is being served is the newcomer answered 503 and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import enum
import functools
import gc
import json
import logging
import os
import resource
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from common.listen import ConnLimits

log = logging.getLogger(__name__)

FD_RESERVE = 64  # descriptors kept free for the database, log files and the listener
TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
RETRY_AFTER = 5  # seconds a refused client is asked to wait (Retry-After)
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n"
    b"retry-after: %d\r\n\r\n" % RETRY_AFTER
)
# Beyond the bound, this many more connections are read (inside FD_RESERVE): a health check
# among them is answered, anything else gets 503 with Retry-After (BUSY_APP).
HEALTH_SLACK = 8
HEALTH_PATHS = frozenset({"/healthz"})
LIMITS_ENV = "ASSIST_CONN_LIMITS"  # the limits, for worker processes started by uvicorn
GRACEFUL_SHUTDOWN = 5  # seconds running requests (long-polls) get after SIGTERM


class Phase(enum.Enum):
    """Where a connection is in its request cycle."""

    WAIT = "wait"
    BODY = "body"
    APP = "app"
    IDLE = "idle"
    SEND = "send"


# Phases in which the client, not the server, must make progress (evictable, timed).
CLIENT_PHASES = frozenset({Phase.WAIT, Phase.BODY, Phase.IDLE, Phase.SEND})


def phase_timeout(limits: ConnLimits, phase: Phase) -> float | None:
    """The deadline of `phase`, or None for the application's own time."""
    return {
        Phase.WAIT: limits.header_timeout,
        Phase.BODY: limits.body_timeout,
        Phase.IDLE: limits.idle_timeout,
        Phase.SEND: limits.body_timeout,
        Phase.APP: None,
    }[phase]


def connection_cap(requested: int, nofile: int) -> int:
    """The connection bound: `requested`, but never more than the descriptors left to use."""
    room = nofile - FD_RESERVE if nofile > 2 * FD_RESERVE else nofile // 2
    return max(1, min(requested, room))


def pick_victim(candidates: Iterable[tuple[Any, Phase, float]]) -> Any | None:
    """Of (connection, phase, since) the one waiting on its client longest; None if all busy."""
    best: tuple[Any, float] | None = None
    for conn, phase, since in candidates:
        if phase in CLIENT_PHASES and (best is None or since < best[1]):
            best = (conn, since)
    return best[0] if best else None


async def busy_app(scope: Any, receive: Any, send: Any) -> None:
    """The answer to a request over the connection bound: 503, Retry-After, closed."""
    body = b'{"code":"ServiceUnavailable","message":"the server is at its connection limit"}'
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class MemoryTrimmer:
    """Give the heap that closed connections freed back to the OS.

    glibc keeps freed memory in its arenas: after 1,000 long-polls came and went, a server held
    on to ~7 KB per poll for good (bench/bench_longpoll.py). Once the open connections dropped
    by `drop` from their high-water mark, a full collection and `malloc_trim(0)` run (tens of
    ms with 10,000 connections' worth of heap), at most every
    `every` seconds, `delay` seconds after the drop so a wave of closes (and the requests it
    ends) is over before the trim."""

    def __init__(self, drop: int = 256, every: float = 10.0, delay: float = 5.0) -> None:
        self.drop = drop
        self.every = every
        self.delay = delay
        self.high = 0  # most connections open since the last trim
        self.last = -every  # loop time of the last trim
        self.pending = False
        self.trims = 0
        self._trim = _malloc_trim()

    def opened(self, open_now: int) -> None:
        self.high = max(self.high, open_now)

    def closed(self, loop: asyncio.AbstractEventLoop, open_now: int) -> None:
        if self._trim is None or self.pending or self.high - open_now < self.drop:
            return
        self.pending = True
        loop.call_later(max(self.delay, self.last + self.every - loop.time()), self.trim, loop)

    def trim(self, loop: asyncio.AbstractEventLoop) -> None:
        self.pending = False
        self.last = loop.time()
        self.high = 0
        self.trims += 1
        gc.collect()  # request cycles (tasks, cancelled waits) hold what closed polls freed
        if self._trim is not None:
            self._trim(0)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where there is none (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc.malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


TRIMMER = MemoryTrimmer()


def raise_fd_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard one; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return int(soft)


def capacity_note(requested: int) -> str:
    """Raise the open-files limit now and say, in one line, how many agents that allows."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = raise_fd_limit()
    cap = connection_cap(requested, nofile)
    how = f"raised from {before} to the hard limit" if nofile > before else "the hard limit"
    if nofile < hard and hard != resource.RLIM_INFINITY:
        how = f"hard limit {hard}"
    note = f"open files {nofile} ({how}): room for about {cap} agents, one long-poll each"
    if cap < requested:
        note += f"; --max-connections {requested} lowered to fit (raise `ulimit -n` for more)"
    return note


def configure(limits: ConnLimits) -> ConnLimits:
    """Set this process's limits (and its workers', through the environment); the bound is
    lowered to fit the file-descriptor limit, which is raised to its hard maximum first."""
    limits = dataclasses.replace(
        limits, max_connections=connection_cap(limits.max_connections, raise_fd_limit())
    )
    os.environ[LIMITS_ENV] = json.dumps(dataclasses.asdict(limits))
    return limits


def current_limits() -> ConnLimits:
    """The limits configure() set (defaults if it was not called)."""
    return _parse_limits(os.environ.get(LIMITS_ENV, ""))


@functools.lru_cache(maxsize=4)
def _parse_limits(raw: str) -> ConnLimits:
    return ConnLimits(**json.loads(raw)) if raw else ConnLimits()


@functools.lru_cache(maxsize=4)
def _timeouts(limits: ConnLimits) -> dict[Phase, float | None]:
    return {phase: phase_timeout(limits, phase) for phase in Phase}


@dataclasses.dataclass
class Slots:
    """The connections of one server that hold a slot under the bound, and those admitted over
    it (HEALTH_SLACK). Counted, not recounted: a connection closed a moment ago stays in
    uvicorn's set until asyncio reports it lost, and (with uvloop) its transport may not say it
    is closing yet, so counting the set let two clients in for one eviction."""

    held: int = 0
    slack: int = 0


def slots_of(server_state: Any) -> Slots:
    """The slot counts of `server_state` (uvicorn's ServerState, one per server)."""
    slots = getattr(server_state, "assist_slots", None)
    if slots is None:
        slots = Slots()
        server_state.assist_slots = slots
    return slots


class HeadWithBody:
    """One response cycle's view of the transport: the response head is held back and written
    together with the first body write.

    uvicorn writes the status line and headers, then the body, as two writes: two send() calls
    and two TCP segments per small answer. On loopback each costs ~150 µs of CPU on this box,
    about a fifth of a signed agent request (docs/scale.md, Ingestion). Anything else (a 100
    Continue, which is written before the response starts; close) passes through, the held head
    first.
    """

    def __init__(self, transport: asyncio.Transport, cycle: Any) -> None:
        self.transport = transport
        self.cycle = cycle
        self.head: bytes | None = None
        self.head_seen = False

    def write(self, data: bytes) -> None:
        if not self.head_seen and self.cycle.response_started:
            self.head_seen = True
            self.head = data
            return
        if self.head is not None:
            data, self.head = self.head + data, None
        self.transport.write(data)

    def close(self) -> None:
        if self.head is not None:
            self.transport.write(self.head)
            self.head = None
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


# scope["extensions"][DISCONNECT_WATCH](callback) -> unwatch: `callback` runs once when the
# request's connection is lost (at once if it is already), so a request that waits long (a
# long-poll) learns that its client left without a task of its own blocked in receive()
DISCONNECT_WATCH = "assist.disconnect_watch"


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with per-phase deadlines and a connection bound."""

    def __init__(self, config: Any, server_state: Any, app_state: Any, _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = current_limits()
        self._timeouts = _timeouts(self.limits)
        self.phase = Phase.WAIT
        self.since = self.loop.time()
        self.header_bytes = 0  # received since the current request started
        self.deadline: float | None = None  # loop time the current phase must end by
        self._timer: asyncio.TimerHandle | None = None
        self.slots = slots_of(server_state)
        self.counted: str | None = None  # "held" or "slack" while counted in self.slots
        self._lost_watchers: list[Callable[[], None]] = []

    @property
    def over_bound(self) -> bool:
        """Admitted in HEALTH_SLACK: only a health check is served."""
        return self.counted == "slack"

    # --- phase bookkeeping ---------------------------------------------------------------

    def enter(self, phase: Phase) -> None:
        """Move to `phase` and set its deadline.

        Cheap on the hot path (several times per request): one timer per connection is armed
        only when none is, and when it fires it re-arms itself for a deadline moved later."""
        now = self.loop.time()
        self.phase = phase
        self.since = now
        if phase is not Phase.WAIT:
            self.header_bytes = 0
        timeout = self._timeouts[phase]
        self.deadline = None if timeout is None else now + timeout
        if self.deadline is not None and self._timer is None and self.transport is not None:
            self._timer = self.loop.call_at(self.deadline, self.expire)

    def expire(self) -> None:
        """The timer fired: close the connection if its phase is past due, else wait on."""
        self._timer = None
        if self.deadline is None or self.transport is None or self.transport.is_closing():
            return
        if self.loop.time() < self.deadline:
            self._timer = self.loop.call_at(self.deadline, self.expire)
            return
        log.info("closing %s: no progress in phase %s", self.client, self.phase.value)
        self.drop()

    def drop(self) -> None:
        """Abort the connection (close() would wait for a buffer the client never reads) and
        give its slot back at once."""
        self.release()
        self.transport.abort()

    def release(self) -> None:
        """Stop counting this connection against the bound (idempotent)."""
        if self.counted == "held":
            self.slots.held -= 1
        elif self.counted == "slack":
            self.slots.slack -= 1
        self.counted = None

    def make_room(self) -> bool:
        """At the bound: close the longest-waiting client-paced connection; False if none."""
        others = (
            (conn, conn.phase, conn.since)
            for conn in self.connections
            if isinstance(conn, GuardedHttpProtocol) and conn.counted == "held"
        )
        victim = pick_victim(others)
        if victim is None:
            return False
        log.info("connection bound reached: closing %s (%s)", victim.client, victim.phase.value)
        victim.drop()
        return True

    # --- asyncio / httptools callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.slots.held < self.limits.max_connections or self.make_room():
            self.counted = "held"
            self.slots.held += 1
        elif self.slots.slack < HEALTH_SLACK:
            self.counted = "slack"
            self.slots.slack += 1
        else:
            log.warning("connection bound reached and every connection busy: refusing one")
            transport.write(REFUSAL)
            transport.close()
            return
        TRIMMER.opened(len(self.connections))
        self.enter(Phase.WAIT)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        """Over the bound, serve a health check and answer anything else with BUSY_APP."""
        if self.over_bound and cycle.scope.get("path") not in HEALTH_PATHS:
            log.warning("connection bound reached and every connection busy: answering 503")
            app = busy_app
        if cycle.scope.get("method") != "HEAD":  # a HEAD answer has no body write to ride on
            cycle.transport = HeadWithBody(cycle.transport, cycle)
        cycle.scope.setdefault("extensions", {})[DISCONNECT_WATCH] = self.watch_disconnect
        super()._start_asgi_task(cycle, app)

    def watch_disconnect(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run `callback` once when this connection is lost (soon, if it is already); returns
        the function that stops watching (DISCONNECT_WATCH)."""
        if self.transport is None or self.transport.is_closing():
            self.loop.call_soon(callback)
            return lambda: None
        self._lost_watchers.append(callback)

        def unwatch() -> None:
            with contextlib.suppress(ValueError):
                self._lost_watchers.remove(callback)

        return unwatch

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.release()
        super().connection_lost(exc)
        watchers, self._lost_watchers = self._lost_watchers, []
        for callback in watchers:
            callback()
        TRIMMER.closed(self.loop, len(self.connections))

    def data_received(self, data: bytes) -> None:
        if self.phase in (Phase.WAIT, Phase.IDLE):
            self.header_bytes += len(data)
            if self.header_bytes > self.limits.max_header_bytes:
                log.info(
                    "closing %s: request headers beyond %d bytes",
                    self.client,
                    self.limits.max_header_bytes,
                )
                self.release()
                self.transport.write(TOO_LARGE)
                self.transport.close()
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.phase is not Phase.WAIT:  # a fresh connection's deadline runs from connect
            self.enter(Phase.WAIT)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self.enter(Phase.BODY)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.enter(Phase.APP)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.phase in (Phase.APP, Phase.BODY, Phase.SEND):
            self.enter(Phase.IDLE)

    def pause_writing(self) -> None:
        super().pause_writing()
        self.enter(Phase.SEND)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.phase is Phase.SEND:
            self.enter(Phase.APP)


class GuardedServer(uvicorn.Server):
    """uvicorn's Server that announces itself once and exits 0 on SIGINT/SIGTERM.

    uvicorn re-raises a caught stop signal after its graceful shutdown, so the process would
    die by the signal (exit -15); a requested stop is a clean exit for our commands.
    """

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_started = on_started

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self.on_started()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        stops = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def serve_asgi(
    app: Any,
    host: str,
    port: int,
    limits: ConnLimits,
    on_listening: Callable[[str], None] | None = None,
    workers: int = 1,
    **options: Any,
) -> int:
    """Run `app` (with workers > 1: an import string of a factory) under uvicorn with the guard
    until SIGINT/SIGTERM; 0 after a clean stop, 1 if it never started. `on_listening` gets the
    URL once, when the socket accepts connections."""
    limits = configure(limits)
    scheme = "https" if options.get("ssl_certfile") else "http"
    url = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "http": GuardedHttpProtocol,
        "timeout_keep_alive": max(1, int(limits.idle_timeout)),
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN,
        **options,
    }
    if workers > 1:
        if on_listening:
            on_listening(url)
        uvicorn.run(app, workers=workers, factory=True, **common)
        return 0
    server = GuardedServer(
        uvicorn.Config(app, **common), lambda: on_listening(url) if on_listening else None
    )
    server.run()
    return 0 if server.started else 1
