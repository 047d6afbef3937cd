"""The PostgreSQL that tests and benchmarks use: 127.0.0.1:5432, user postgres with trust auth,
an admin database "test" (`make postgres` sets it up)."""

from __future__ import annotations

import asyncio
import os

PG_HOST = os.environ.get("ASSIST_TEST_PG_HOST", "127.0.0.1:5432")
PG_ADMIN_DSN = f"postgresql://postgres@{PG_HOST}/test"


def pg_admin(sql: str) -> None:
    """Run one statement as the admin (CREATE/DROP DATABASE)."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())
