"""The Store on PostgreSQL: fast text statements straight to asyncpg, transactions, and the
group-committed writer lanes (server/store/db.py holds the Store itself)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from server.store.conn import T, TxFunction
from server.store.groupcommit import FastResult, GroupCommit, ResultRow, is_plain_text

log = logging.getLogger(__name__)

PG_WRITE_LANES = 4  # writer connections, each group-committing its own queue

_ASYNC_COMMIT = text("SET LOCAL synchronous_commit TO OFF")
# deadlock_detected, serialization_failure: a batch that hit one is run again job by job
_RETRY_SQLSTATES = ("40P01", "40001")
RETRY_PAUSE = 0.05  # seconds before the first retry (a restarting PostgreSQL answers 57P03)


@dataclass
class _PgJob:
    fn: TxFunction[Any]
    durable: bool
    future: asyncio.Future[Any]


_BIND = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")  # a :name parameter, as text() finds them


@functools.lru_cache(maxsize=256)
def _numbered(sql: str) -> tuple[str, tuple[str, ...], bool]:
    """A text() statement in asyncpg's form: $n parameters, their names, whether it returns rows."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    upper = sql.lstrip().upper()
    returns_rows = upper.startswith(("SELECT", "WITH")) or " RETURNING " in upper
    return _BIND.sub(number, sql), tuple(names), returns_rows


class _PgFastConn:
    """A SQLAlchemy AsyncConnection whose plain text() statements go straight to asyncpg.

    SQLAlchemy's execution layers cost more server CPU than asyncpg itself on the agent API's
    hot path; the prepared text statements there need none of them (no type processing, no
    compilation). Everything else, and the transaction itself, stays with SQLAlchemy: the first
    fast statement opens the transaction through the driver adapter exactly as SQLAlchemy would.
    """

    def __init__(self, conn: Any, adapter: Any, autocommit: bool = False) -> None:
        self._conn = conn
        self._adapter = adapter
        self._autocommit = autocommit  # each fast statement on its own (a small read)
        self.dialect = conn.dialect

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        if not (is_plain_text(statement) and (parameters is None or isinstance(parameters, dict))):
            return await self._conn.execute(statement, parameters)
        sql, names, returns_rows = _numbered(statement.text)
        args = [(parameters or {})[name] for name in names]
        adapter = self._adapter
        async with adapter._execute_mutex:
            if adapter._transaction is None and not self._autocommit:
                await adapter._start_transaction()
            if returns_rows:
                records = await adapter._connection.fetch(sql, *args)
                names = tuple(records[0].keys()) if records else ()
                return _PgResult(
                    [ResultRow(names, tuple(r.values())) for r in records], len(records)
                )
            status = await adapter._connection.execute(sql, *args)
        count = status.rsplit(" ", 1)[-1]
        return _PgResult([], int(count) if count.isdigit() else -1)

    async def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._conn.run_sync(fn, *args)


class _PgResult(FastResult):
    """Rows (or a row count) of a statement _PgFastConn ran."""

    def __init__(self, rows: list[ResultRow], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount


@contextlib.asynccontextmanager
async def pg_transaction(
    engine: AsyncEngine, autocommit: bool = False
) -> AsyncIterator[_PgFastConn]:
    """engine.begin(), handing out the fast connection; with `autocommit`, engine.connect()
    and no transaction around the fast statements (a lookup by key: BEGIN and COMMIT were two
    of its three round trips).

    A connection found dead by a fast statement is invalidated here, as SQLAlchemy does for its
    own statements, so the pool replaces it instead of handing it out again (PostgreSQL
    restarted, or the server's backends terminated)."""
    opened = engine.connect() if autocommit else engine.begin()
    async with opened as conn:
        raw = await conn.get_raw_connection()
        try:
            yield _PgFastConn(conn, raw.dbapi_connection, autocommit)
        except Exception as exc:
            if connection_lost(exc) and not conn.invalidated:
                await conn.invalidate()
            raise


def connection_lost(exc: BaseException) -> bool:
    """Whether an error (asyncpg's, or SQLAlchemy's wrapping of it) means the connection is gone
    or no longer usable: the socket closed, the backend terminated (SQLSTATE class 08, 57P01-03:
    PostgreSQL restarted or pg_terminate_backend), or the driver's protocol state left mid-query
    by such an error ("another operation is in progress")."""
    import asyncpg

    lost = (
        OSError,
        asyncpg.exceptions.ConnectionDoesNotExistError,
        asyncpg.InterfaceError,
        asyncpg.exceptions.InternalClientError,
    )
    return any(
        isinstance(e, lost) or getattr(e, "connection_invalidated", False) for e in _causes(exc)
    ) or _sqlstate(exc).startswith(_LOST_SQLSTATES)


_LOST_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The error and what it wraps: SQLAlchemy's `orig`, then the `raise … from` chain."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = getattr(seen, "orig", None) or seen.__cause__


class _PgLane(GroupCommit[_PgJob]):
    """One writer connection's queue: runs the transaction functions queued meanwhile as one
    transaction (durable commit if any of them asked for it). When any function of a batch
    fails, the batch rolls back and each function runs again alone, so a failure (or a deadlock
    with another replica) never leaks one job's partial writes or error into another's."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__()
        self.engine = engine

    async def _commit(self, batch: list[_PgJob]) -> None:
        if len(batch) == 1 or not await self._run_batch(batch):
            for job in batch:
                await self._run_alone(job)

    async def _run_batch(self, batch: list[_PgJob]) -> bool:
        """All of `batch` in one transaction; False (nothing stored) if any of it failed."""
        results = []
        try:
            async with pg_transaction(self.engine) as conn:
                if not any(job.durable for job in batch):
                    await conn.execute(_ASYNC_COMMIT)
                for job in batch:
                    results.append(await job.fn(conn))  # type: ignore[arg-type]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("a batch of %d writes rolled back (%s); one by one now", len(batch), exc)
            return False
        for job, result in zip(batch, results):
            if not job.future.done():
                job.future.set_result(result)
        return True

    async def _run_alone(self, job: _PgJob) -> None:
        for attempt in range(3):
            try:
                async with pg_transaction(self.engine) as conn:
                    if not job.durable:
                        await conn.execute(_ASYNC_COMMIT)
                    result = await job.fn(conn)  # type: ignore[arg-type]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if attempt < 2 and (_sqlstate(exc) in _RETRY_SQLSTATES or connection_lost(exc)):
                    await asyncio.sleep(RETRY_PAUSE * (attempt + 1))
                    continue
                if not job.future.done():
                    job.future.set_exception(exc)
                return
            if not job.future.done():
                job.future.set_result(result)
            return


class PgGroupCommit:
    """Group-committed writes on PostgreSQL over a few writer lanes.

    Per request the server used to pay a pool checkout, BEGIN, SET LOCAL and COMMIT around a
    statement or two; under many agents that bookkeeping was most of both processes' CPU. Each
    lane batches what queued while its last batch ran. Jobs are spread over the lanes by
    instance, so one agent's writes always take the same lane: two lanes never lock the same
    instance's rows, and batches of agent requests cannot deadlock each other.
    """

    def __init__(self, engine: AsyncEngine, lanes: int) -> None:
        self._lanes = [_PgLane(engine) for _ in range(lanes)]

    async def write(self, fn: TxFunction[T], durable: bool, key: str) -> T:
        job = _PgJob(fn, durable, asyncio.get_running_loop().create_future())
        self._lanes[zlib.crc32(key.encode()) % len(self._lanes)].submit(job)
        return await job.future  # type: ignore[no-any-return]

    def busy(self) -> bool:
        return any(lane.busy() for lane in self._lanes)

    def close(self) -> None:
        for lane in self._lanes:
            lane.stop_writer()


def _sqlstate(exc: BaseException) -> str:
    """The SQLSTATE of a database error (asyncpg's, wrapped by SQLAlchemy or not), or ""."""
    for seen in _causes(exc):
        code = getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None)
        if isinstance(code, str):
            return code
    return ""
