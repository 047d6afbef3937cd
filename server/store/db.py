"""The Store: one async engine (SQLite with WAL, or PostgreSQL) and its transactions.

Queries live in server/store/queries.py and take the connection a transaction yields, so an
action can combine several (nonce + report) in one commit. SQLite allows one writer: writes are
serialized in-process with a lock and begin IMMEDIATE, so concurrent requests queue instead of
spinning on SQLITE_BUSY; several processes on one file still work through the busy timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from common.errors import ConfigError
from server.store import migrations

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000


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


class Store:
    """The database behind the server: engine, transactions, dialect quirks."""

    def __init__(self, url: str | None = None, pool_size: int = 10) -> None:
        self.url = normalize_db_url(url)
        self.dialect = "postgresql" if self.url.startswith("postgresql") else "sqlite"
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        self.engine = self._create_engine(pool_size)

    def _create_engine(self, pool_size: int) -> AsyncEngine:
        """Build the engine; SQLite gets WAL, a busy timeout and manual BEGIN handling."""
        if self.dialect == "postgresql":
            return create_async_engine(
                self.url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )
        path = make_url(self.url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            self.url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A read-write transaction, committed when the block exits cleanly."""
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock:
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
                async with conn.begin():
                    yield conn

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction (a consistent snapshot)."""
        async with self.engine.connect() as conn:
            async with conn.begin():
                yield conn

    async def migrate(self) -> tuple[int, int]:
        """Bring the schema up to date; return (version before, version after)."""
        async with self.write() as conn:
            return await migrations.migrate(conn)

    async def schema_version(self) -> int:
        """The schema version the database is at."""
        async with self.read() as conn:
            return await migrations.current_version(conn)

    async def close(self) -> None:
        """Release every pooled connection."""
        await self.engine.dispose()
