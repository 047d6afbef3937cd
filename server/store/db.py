"""The Store: one seam for every transaction, on SQLite (WAL) or PostgreSQL.

Callers hand the store a *transaction function*: ``async def tx(conn) -> T`` that runs queries
(server/store/access.py, commands.py, instances.py, invocations.py, tasks.py) on `conn`. The
store runs it in one transaction:

- PostgreSQL: on the event loop with an asyncpg-backed AsyncConnection; replicas share the
  database. Writes are group-committed too, over a few writer lanes (an instance's writes always
  take the same lane): each lane runs every transaction function queued meanwhile in one
  transaction, and runs them again one by one if any of them fails.
- SQLite: with the plain sqlite3 driver. Writes run on the event loop's own thread: a writer
  task takes every transaction queued meanwhile and runs them in one BEGIN IMMEDIATE … COMMIT,
  each inside its own SAVEPOINT (group commit: a failing function rolls back alone); a writer
  thread was measured slower (the GIL handed back and forth, docs/scale.md). Reads run on a small
  thread pool (WAL lets them proceed beside the writer); a small read by key on the loop itself.

The PostgreSQL side is server/store/pg.py; the queue both writers take their batches from is
server/store/groupcommit.py.

On SQLite, transaction functions must not await anything but `conn` (they are driven to
completion synchronously); the store refuses one that suspends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sqlite3
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from common.errors import ConfigError
from server.store import migrations
from server.store.conn import T, TxFunction
from server.store.groupcommit import FastResult, GroupCommit, is_plain_text
from server.store.pg import (
    PG_WRITE_LANES,
    RETRY_PAUSE,
    PgGroupCommit,
    connection_lost,
    pg_transaction,
)

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
READ_THREADS = 2
# seconds between the writer's tries for the write lock while another process holds it (doubling)
LOCK_PAUSE = 0.0002
LOCK_PAUSE_MAX = 0.002


def default_data_dir() -> Path:
    """~/.local/share/aliyun-assist-server (honours $XDG_DATA_HOME)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "aliyun-assist-server"


def normalize_db_url(url: str | None) -> str:
    """Map `sqlite:///PATH` / `postgresql://…` (or None: the default file) to async driver URLs."""
    if not url:
        path = default_data_dir() / "assist.db"
        return f"sqlite+aiosqlite:///{path}"
    if url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        return url
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ConfigError(
        f"unsupported database URL: {url}",
        hint="use sqlite:///PATH or postgresql://user@host:port/dbname",
    )


def asyncpg_dsn(url: str) -> str:
    """The plain libpq-style DSN asyncpg.connect takes, from a SQLAlchemy URL."""
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to completion, synchronously."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a SQLite transaction function awaited something other than its connection")


class SyncConn:
    """A sync SQLAlchemy Connection behind the async interface transaction functions use.

    Prepared text() statements go straight to the sqlite3 cursor (SQLite takes :name
    parameters natively), skipping SQLAlchemy's per-execute work on the hot path.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.dialect = conn.dialect

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        if is_plain_text(statement) and (parameters is None or isinstance(parameters, dict)):
            raw = self._conn.connection.driver_connection
            assert raw is not None
            return FastResult(raw.execute(statement.text, parameters or {}))
        if parameters is None:
            return self._conn.execute(statement)
        return self._conn.execute(statement, parameters)

    async def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self._conn, *args)


@dataclass
class _Job:
    fn: TxFunction[Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    result: Any = None
    error: BaseException | None = None
    done: bool = field(default=False)


def _resolve(job: _Job) -> None:
    """Hand a job's outcome to its awaiting coroutine (on the loop's thread)."""
    if job.future.done():
        return
    if job.error is not None:
        job.future.set_exception(job.error)
    else:
        job.future.set_result(job.result)


class _SqliteRunner(GroupCommit[_Job]):
    """Group-committed writes on the event loop, reads on a small thread pool, one SQLite file.

    Writes run on the loop's own thread: a writer task takes every transaction function queued
    since its last turn and runs them in one BEGIN IMMEDIATE … COMMIT (WAL, synchronous=NORMAL:
    no fsync per commit), each in its own SAVEPOINT. No thread hand-off and no GIL ping-pong on
    the hot path; a batch blocks the loop only for the few milliseconds SQLite needs.
    """

    def __init__(self, path: str) -> None:
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(
            f"sqlite:///{path}",
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            pool_size=READ_THREADS + 2,
        )
        _configure_sqlite(self.engine)
        super().__init__()
        self._conn: Connection | None = None
        self._inline: Connection | None = None  # the loop thread's own, for small reads
        self._readers = concurrent.futures.ThreadPoolExecutor(READ_THREADS, "sqlite-reader")

    async def write(self, fn: TxFunction[T]) -> T:
        loop = asyncio.get_running_loop()
        job = _Job(fn, loop, loop.create_future())
        self.submit(job)
        return await job.future  # type: ignore[no-any-return]

    async def read(self, fn: TxFunction[T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_sync, fn)

    def read_inline(self, fn: TxFunction[T]) -> T:
        """A small read on the calling (event loop) thread, on a connection of its own kept
        open: a checkout from the pool and its reset on return cost more than the lookup."""
        if self._inline is None:
            self._inline = self.engine.connect()
        try:
            with self._inline.begin():
                return drive(fn(SyncConn(self._inline)))
        except (sqlite3.Error, DBAPIError):
            # a broken connection is not kept: the next read opens another
            self._inline.invalidate()
            self._inline.close()
            self._inline = None
            raise

    def _read_sync(self, fn: TxFunction[T]) -> T:
        with self.engine.connect() as conn, conn.begin():
            return drive(fn(SyncConn(conn)))

    async def _commit(self, batch: list[_Job]) -> None:
        try:
            conn = self._writer_connection()
            await self._lock(conn)
        except Exception as exc:  # unopenable file, or locked too long: fail the batch
            for job in batch:
                job.error = exc
                _resolve(job)
            return
        self._run_batch(conn, batch)
        for job in batch:
            _resolve(job)

    def _writer_connection(self) -> Connection:
        """The writer's connection: SQLAlchemy emits no BEGIN on it (`_lock` has), and it never
        waits for a lock inside SQLite (busy_timeout 0), which would block the event loop."""
        if self._conn is None:
            conn = self.engine.connect().execution_options(sqlite_begin=None)
            raw = conn.connection.driver_connection
            assert raw is not None
            raw.execute("PRAGMA busy_timeout=0")
            self._conn = conn
        return self._conn

    @staticmethod
    async def _lock(conn: Connection) -> None:
        """BEGIN IMMEDIATE: the database's write lock, waited for on the event loop while
        another process holds it (another worker of `serve --workers N`, or an operator's
        command); a batch waiting for it grows meanwhile. OperationalError after
        SQLITE_BUSY_TIMEOUT_MS."""
        raw = conn.connection.driver_connection
        assert raw is not None
        if raw.in_transaction:  # left open by a failure between BEGIN and the batch
            raw.rollback()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SQLITE_BUSY_TIMEOUT_MS / 1000
        pause = LOCK_PAUSE
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or loop.time() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, LOCK_PAUSE_MAX)

    @staticmethod
    def _run_batch(conn: Connection, batch: list[_Job]) -> None:
        """One transaction for the whole batch, one savepoint per job."""
        try:
            with conn.begin():
                raw = conn.connection.driver_connection
                assert raw is not None
                for job in batch:
                    raw.execute("SAVEPOINT job")
                    try:
                        job.result = drive(job.fn(SyncConn(conn)))
                    except BaseException as exc:
                        raw.execute("ROLLBACK TO job")
                        job.error = exc
                    raw.execute("RELEASE job")
        except Exception as exc:  # the commit failed: nothing of the batch was stored
            log.error("SQLite group commit failed: %s", exc)
            for job in batch:
                job.error = job.error or exc

    def close(self) -> None:
        self.stop_writer()
        if self._conn is not None:
            self._conn.close()
        if self._inline is not None:
            self._inline.close()
        self._readers.shutdown(wait=True)
        self.engine.dispose()


def _configure_sqlite(engine: Engine) -> None:
    """WAL, busy timeout, and BEGIN issued by us (IMMEDIATE for writers)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        if mode is not None:  # None: the writer, which has begun already (_SqliteRunner._lock)
            conn.exec_driver_sql(f"BEGIN {mode}")


def _busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY: another connection holds the lock ("database is locked")."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is None:
        return "database is locked" in str(exc)
    return bool(code & 0xFF == _SQLITE_BUSY)


_SQLITE_BUSY = 5  # and its extended codes, in the low byte


class Store:
    """The database behind the server."""

    def __init__(self, url: str | None = None, pool_size: int = 16) -> None:
        self.url = normalize_db_url(url)
        self.dialect = "postgresql" if self.url.startswith("postgresql") else "sqlite"
        self._sqlite: _SqliteRunner | None = None
        self._engine: AsyncEngine | None = None
        self._pg_writer: PgGroupCommit | None = None
        if self.dialect == "sqlite":
            self._sqlite = _SqliteRunner(make_url(self.url).database or ":memory:")
        else:
            # No pre-ping (a round trip per transaction); stale connections are recycled instead.
            # No overflow: under a burst, overflow connections were opened (a TLS handshake with
            # Debian's default ssl=on) and closed again for each read; now reads queue briefly
            # for one of the pool's connections.
            self._engine = create_async_engine(
                self.url, pool_size=pool_size, max_overflow=0, pool_recycle=600
            )
            self._pg_writer = PgGroupCommit(self._engine, PG_WRITE_LANES)

    async def write(self, fn: TxFunction[T], durable: bool = True, key: str = "") -> T:
        """Run `fn` in a read-write transaction; its exception rolls it back and propagates.

        `durable=False` (heartbeats, task lists, nonces of idempotent requests) lets PostgreSQL
        acknowledge before the WAL flush: a database crash may forget the last few such writes,
        never a result report. SQLite in WAL mode with synchronous=NORMAL behaves so always.
        `key` (an instance id) keeps one agent's writes in one PostgreSQL writer lane.
        """
        if self._sqlite is not None:
            return await self._sqlite.write(fn)
        assert self._pg_writer is not None
        return await self._pg_writer.write(fn, durable, key)

    async def read(self, fn: TxFunction[T], small: bool = False) -> T:
        """Run `fn` in a read-only transaction (a consistent snapshot). `small`: one lookup by
        key, which SQLite runs on the event loop's own thread (tens of microseconds) instead of
        the reader pool (under a fan-out the pool's answer waits behind every woken long-poll
        in the loop's queue, and InvokeCommand's next step with it: docs/scale.md), and
        PostgreSQL as one statement without BEGIN and COMMIT around it."""
        if self._sqlite is not None:
            if small:
                return self._sqlite.read_inline(fn)
            return await self._sqlite.read(fn)
        assert self._engine is not None
        for attempt in range(3):  # a read is safe to repeat on a fresh connection
            try:
                if small:  # one statement: no transaction around it (PostgreSQL's own)
                    async with pg_transaction(self._engine, autocommit=True) as fast:
                        return await fn(fast)  # type: ignore[arg-type]
                async with self._engine.connect() as conn, conn.begin():
                    return await fn(conn)  # type: ignore[arg-type]
            except Exception as exc:
                if attempt == 2 or not connection_lost(exc):
                    raise
                await asyncio.sleep(RETRY_PAUSE * (attempt + 1))
        raise AssertionError("unreachable")

    async def migrate(self) -> tuple[int, int]:
        """Bring the schema up to date; return (version before, version after)."""
        return await self.write(migrations.migrate)

    async def schema_version(self) -> int:
        """The schema version the database is at."""
        return await self.read(migrations.current_version)

    async def close(self) -> None:
        """Stop the threads and release every connection."""
        if self._sqlite is not None:
            while self._sqlite.busy():  # let queued writes finish first
                await asyncio.sleep(0.01)
            self._sqlite.close()
        if self._pg_writer is not None:
            while self._pg_writer.busy():  # let queued writes finish first
                await asyncio.sleep(0.01)
            self._pg_writer.close()
        if self._engine is not None:
            await self._engine.dispose()
