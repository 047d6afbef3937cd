"""Durable local state in SQLite under state/: the report outbox and the execution ledger.

The outbox holds every report until the server acknowledges it (the server dedupes, so a resend
after a crash is harmless). The ledger records each execution before its process starts and marks
it done in the same transaction that queues its terminal report, so a restarted agent knows
exactly which executions died with it and never runs one twice.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DB_FILE = "agent.db"
OUTPUT_BUDGET = 8 << 20  # bytes of queued report bodies before older output is given up
BATCH_BYTES = 1 << 20  # bytes of report bodies sent in one request (the server takes 2 MiB)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS executions (
    invoke_id TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    state TEXT NOT NULL,
    start_time INTEGER NOT NULL,
    pid INTEGER NOT NULL DEFAULT 0,
    proc_start TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL,
    PRIMARY KEY (invoke_id, execution_id)
);
CREATE TABLE IF NOT EXISTS seen (
    invoke_id TEXT PRIMARY KEY,
    boot_id TEXT NOT NULL,
    first_seen REAL NOT NULL
);
"""


@dataclass
class Report:
    """One queued report."""

    id: int
    key: str
    path: str
    body: dict[str, Any]
    attempts: int
    size: int = 0  # bytes of the body as queued


def batches(reports: list[Report], max_bytes: int = BATCH_BYTES) -> Iterator[list[Report]]:
    """Consecutive groups of reports, in order, each within `max_bytes` of bodies (a larger
    report makes a group of its own)."""
    group: list[Report] = []
    size = 0
    for report in reports:
        if group and size + report.size > max_bytes:
            yield group
            group, size = [], 0
        group.append(report)
        size += report.size
    if group:
        yield group


@dataclass
class StartedExecution:
    """An execution the ledger says is running."""

    invoke_id: str
    execution_id: str
    start_time: int
    pid: int
    proc_start: str


class AgentDatabase:
    """The agent's SQLite database, safe to share between threads."""

    def __init__(self, state_dir: Path, output_budget: int = OUTPUT_BUDGET) -> None:
        self.output_budget = output_budget  # bytes; see trim_to_budget
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = state_dir / DB_FILE
        # created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the mode of
        # the database file, and queued reports carry task output
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives kill -9
        self._db.execute("PRAGMA busy_timeout=5000")
        # bound the WAL: checkpoint every 1 MiB and shrink the file back to 1 MiB afterwards
        self._db.execute("PRAGMA wal_autocheckpoint=256")
        self._db.execute("PRAGMA journal_size_limit=1048576")
        self._db.executescript(_SCHEMA)
        self.changed = threading.Condition()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _wake(self) -> None:
        with self.changed:
            self.changed.notify_all()

    # -- outbox ----------------------------------------------------------------------------

    def enqueue(self, key: str, path: str, body: dict[str, Any]) -> bool:
        """Queue a report once per key; False if one with this key was already queued."""
        with self._transaction() as db:
            added = _insert_report(db, key, path, body)
        self._wake()
        return added

    def enqueue_capped(
        self, key: str, path: str, body: dict[str, Any], group: str, keep: int
    ) -> None:
        """Queue a report, keeping only the newest `keep` queued reports whose key starts with
        `group` (streamed chunks of one execution: while the server is away they would pile up
        without end; the terminal report carries the tail anyway)."""
        with self._transaction() as db:
            _insert_report(db, key, path, body)
            db.execute(
                "DELETE FROM outbox WHERE substr(key, 1, ?) = ? AND id NOT IN (SELECT id FROM "
                "outbox WHERE substr(key, 1, ?) = ? ORDER BY id DESC LIMIT ?)",
                (len(group), group, len(group), group, max(0, keep)),
            )
        self._wake()

    def due_reports(self, now: float, limit: int = 50) -> list[Report]:
        """Reports whose retry time has come, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, key, path, body, attempts FROM outbox WHERE next_try <= ? "
                "ORDER BY id LIMIT ?",
                (now, limit),
            ).fetchall()
        return [Report(r[0], r[1], r[2], json.loads(r[3]), r[4], len(r[3])) for r in rows]

    def next_retry_time(self) -> float | None:
        """When the earliest queued report may be tried, or None when the outbox is empty."""
        with self._lock:
            row = self._db.execute("SELECT MIN(next_try) FROM outbox").fetchone()
        return None if row[0] is None else float(row[0])

    def acknowledge(self, report_id: int) -> None:
        """Forget a report the server acknowledged."""
        with self._transaction() as db:
            db.execute("DELETE FROM outbox WHERE id = ?", (report_id,))

    def postpone(self, report_id: int, next_try: float) -> None:
        """Count a failed attempt and set the next try."""
        with self._transaction() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_try = ? WHERE id = ?",
                (next_try, report_id),
            )

    def retry_all_now(self) -> None:
        """Make every queued report due (the server came back)."""
        with self._transaction() as db:
            db.execute("UPDATE outbox SET next_try = 0")
        self._wake()

    def pending_count(self) -> int:
        """How many reports wait for acknowledgement."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    # -- execution ledger --------------------------------------------------------------------

    def claim_execution(self, invoke_id: str, execution_id: str, start_time: int) -> bool:
        """Record an execution as started; False if it was already started or done."""
        with self._transaction() as db:
            try:
                db.execute(
                    "INSERT INTO executions (invoke_id, execution_id, state, start_time, updated)"
                    " VALUES (?, ?, 'running', ?, ?)",
                    (invoke_id, execution_id, start_time, time.time()),
                )
            except sqlite3.IntegrityError:
                return False
        return True

    def set_process(self, invoke_id: str, execution_id: str, pid: int, proc_start: str) -> None:
        """Remember the process group of a running execution (to clean up after a crash)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE executions SET pid = ?, proc_start = ? WHERE invoke_id = ? AND "
                "execution_id = ?",
                (pid, proc_start, invoke_id, execution_id),
            )

    def finish_execution(
        self, invoke_id: str, execution_id: str, key: str, path: str, body: dict[str, Any]
    ) -> None:
        """Mark an execution done and queue its terminal report, atomically."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO executions (invoke_id, execution_id, state, start_time, updated) "
                "VALUES (?, ?, 'done', ?, ?) ON CONFLICT (invoke_id, execution_id) DO UPDATE "
                "SET state = 'done', updated = excluded.updated",
                (invoke_id, execution_id, int(body.get("start_time") or 0), time.time()),
            )
            _insert_report(db, key, path, body)
            trimmed = _trim_to_budget(db, self.output_budget)
        if trimmed:
            log.warning(
                "the server is away and queued reports exceed %d bytes: gave up the output of"
                " %d older reports (their status stays queued, the bytes count as dropped)",
                self.output_budget,
                trimmed,
            )
        self._wake()

    def started_executions(self) -> list[StartedExecution]:
        """Executions recorded as running (after a crash: the ones that died with the agent)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT invoke_id, execution_id, start_time, pid, proc_start FROM executions "
                "WHERE state = 'running'"
            ).fetchall()
        return [StartedExecution(*row) for row in rows]

    def execution_known(self, invoke_id: str, execution_id: str) -> bool:
        """True if this execution was started (or finished) before."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM executions WHERE invoke_id = ? AND execution_id = ?",
                (invoke_id, execution_id),
            ).fetchone()
        return row is not None

    def execution_count(self, invoke_id: str) -> int:
        """How many executions of a task were ever started here."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM executions WHERE invoke_id = ?", (invoke_id,)
            ).fetchone()
        return int(row[0])

    def prune_executions(self, older_than: float) -> None:
        """Forget finished executions last touched before `older_than` (Unix seconds).

        An execution whose terminal report still waits in the outbox is kept: the server lists
        the task until that report arrives, and the ledger is what stops a second run.
        """
        with self._transaction() as db:
            db.execute(
                "DELETE FROM executions WHERE state = 'done' AND updated < ? AND NOT EXISTS "
                "(SELECT 1 FROM outbox WHERE outbox.key = "
                "'terminal/' || executions.invoke_id || '/' || executions.execution_id)",
                (older_than,),
            )

    # -- first sighting of reboot-bound tasks ------------------------------------------------

    def first_seen_boot(self, invoke_id: str, boot_id: str) -> str:
        """The boot a task was first seen in (recording `boot_id` if this is the first time)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO seen (invoke_id, boot_id, first_seen) VALUES (?, ?, ?)",
                (invoke_id, boot_id, time.time()),
            )
            row = db.execute(
                "SELECT boot_id FROM seen WHERE invoke_id = ?", (invoke_id,)
            ).fetchone()
        return str(row[0])


def _insert_report(db: sqlite3.Connection, key: str, path: str, body: dict[str, Any]) -> bool:
    """Insert one report row unless its key is queued already."""
    cursor = db.execute(
        "INSERT OR IGNORE INTO outbox (key, path, body, created) VALUES (?, ?, ?, ?)",
        (key, path, json.dumps(body, separators=(",", ":")), time.time()),
    )
    return cursor.rowcount > 0


def _trim_to_budget(db: sqlite3.Connection, budget: int) -> int:
    """Keep the queued report bodies within `budget` bytes (docs/agent-state.md, Bounded).

    Periodic runs while the server is away each queue their output; oldest first, streamed
    chunks are deleted (the terminal reports carry the tails), then terminal reports lose their
    output, which is counted in `dropped`: every run's status and exit code stays queued.
    Returns how many terminal reports gave up their output.
    """
    total = int(db.execute("SELECT COALESCE(SUM(length(body)), 0) FROM outbox").fetchone()[0])
    if total <= budget:
        return 0
    chunks = db.execute(
        "SELECT id, length(body) FROM outbox WHERE key LIKE 'running/%' ORDER BY id"
    ).fetchall()
    for report_id, size in chunks:
        db.execute("DELETE FROM outbox WHERE id = ?", (report_id,))
        total -= size
        if total <= budget:
            return 0
    trimmed = 0
    rows = db.execute(
        "SELECT id, body FROM outbox WHERE key LIKE 'terminal/%' AND body LIKE '%\"output\":\"_%'"
        " ORDER BY id"
    ).fetchall()
    for report_id, text in rows[:-1]:  # the newest report keeps its output whatever its size
        body = json.loads(text)
        try:
            given_up = len(base64.b64decode(str(body.get("output") or "")))
        except (binascii.Error, ValueError):
            given_up = 0
        body["output"] = ""
        body["dropped"] = int(body.get("dropped") or 0) + given_up
        smaller = json.dumps(body, separators=(",", ":"))
        db.execute("UPDATE outbox SET body = ? WHERE id = ?", (smaller, report_id))
        total -= len(text) - len(smaller)
        trimmed += 1
        if total <= budget:
            break
    return trimmed


def count_pending(state_dir: Path) -> int | None:
    """Queued reports, read-only (for `assist-agent status`); None if the database is unreadable."""
    path = state_dir / DB_FILE
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return None
