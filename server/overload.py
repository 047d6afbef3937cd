"""Out of descriptors or database connections: answered 503 with Retry-After, never 500.

A burst of connections can use the last file descriptors between the kernel's accept and the
connection bound (common/connguard.py); a request that then needs the database fails with
`sqlite3.OperationalError: unable to open database file`, `OSError(EMFILE)`, or PostgreSQL's
"too many connections". That is the server being full for a moment, not a bug: the client is
told to come back (`Retry-After`), and agents move to another replica meanwhile.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from dataclasses import dataclass

from common.connguard import RETRY_AFTER

log = logging.getLogger(__name__)

CODE = "ServiceUnavailable"
MESSAGE = "The request has failed due to a temporary failure of the server."
HEADERS = {"Retry-After": str(RETRY_AFTER)}
_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_SQLITE_TEXT = "unable to open database file"
_PG_STATES = frozenset({"53300", "53000"})  # too_many_connections, insufficient_resources


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception, what it wraps (SQLAlchemy's .orig) and what caused it."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or any(item is s for s in seen) or len(seen) > 16:
            continue
        seen.append(item)
        todo += [getattr(item, "orig", None), item.__cause__, item.__context__]
    return seen


def is_exhaustion(exc: BaseException) -> bool:
    """Whether `exc` comes from running out of descriptors (or database connections)."""
    for item in _causes(exc):
        if isinstance(item, OSError) and item.errno in _ERRNOS:
            return True
        if isinstance(item, sqlite3.OperationalError) and _SQLITE_TEXT in str(item):
            return True
        if str(getattr(item, "sqlstate", "") or "") in _PG_STATES:
            return True
    return False


@dataclass(frozen=True)
class Failure:
    """How an unexpected exception of a request is answered."""

    status: int
    code: str
    message: str
    headers: dict[str, str]


def failure(exc: BaseException, what: str, internal_message: str) -> Failure:
    """503 + Retry-After for exhaustion (one warning line), else 500 (logged with its trace)."""
    if is_exhaustion(exc):
        log.warning("%s: out of descriptors (%s); answered 503", what, exc)
        return Failure(503, CODE, MESSAGE, dict(HEADERS))
    log.error("%s failed", what, exc_info=exc)
    return Failure(500, "InternalError", internal_message, {})
