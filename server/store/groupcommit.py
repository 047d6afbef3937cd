"""What the Store's two backends share: rows and results of statements run past SQLAlchemy, and
the group-commit queue each backend's writer takes its batches from (server/store/db.py for
SQLite and the Store, server/store/pg.py for PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

from sqlalchemy.sql.elements import TextClause

MAX_BATCH = 512  # transaction functions per group commit


class ResultRow:
    """A result row with the `_mapping` SQLAlchemy rows have (built when asked for: a caller
    that reads by index, as InvokeCommand's instance check does for 100 rows, needs none)."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: tuple[str, ...], values: tuple[Any, ...]) -> None:
        self._names = names
        self._values = values

    @property
    def _mapping(self) -> dict[str, Any]:
        return dict(zip(self._names, self._values))

    def __getitem__(self, index: int) -> Any:
        return self._values[index]


class FastResult:
    """The part of a SQLAlchemy Result the queries use, over a raw sqlite3 cursor."""

    def __init__(self, cursor: Any) -> None:
        self.rowcount = cursor.rowcount
        names = tuple(d[0] for d in cursor.description) if cursor.description else ()
        self._rows = [ResultRow(names, r) for r in cursor.fetchall()] if names else []

    def first(self) -> ResultRow | None:
        return self._rows[0] if self._rows else None

    def all(self) -> list[ResultRow]:
        return self._rows

    def __iter__(self) -> Any:
        return iter(self._rows)


def is_plain_text(statement: Any) -> bool:
    """A text() statement sqlite3 can run as is (named :params, no expanding IN lists)."""
    return isinstance(statement, TextClause) and not any(
        b.expanding for b in statement._bindparams.values()
    )


J = TypeVar("J")


class GroupCommit(Generic[J]):
    """A queue of write jobs that a writer task takes in batches: every job queued since its
    last turn (up to MAX_BATCH) goes to `_commit` at once. Subclasses commit a batch."""

    def __init__(self) -> None:
        self.pending: list[J] = []
        self.in_flight = 0
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None

    def submit(self, job: J) -> None:
        if self._writer is None or self._writer.done():
            self._wake = asyncio.Event()
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        self.pending.append(job)
        assert self._wake is not None
        self._wake.set()

    def busy(self) -> bool:
        return bool(self.pending) or self.in_flight > 0

    async def _commit(self, batch: list[J]) -> None:
        raise NotImplementedError

    async def _write_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                batch = self.pending[:MAX_BATCH]
                del self.pending[:MAX_BATCH]
                self.in_flight = len(batch)
                try:
                    await self._commit(batch)
                finally:
                    self.in_flight = 0
                await asyncio.sleep(0)  # let the requests that queued meanwhile in

    def stop_writer(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
