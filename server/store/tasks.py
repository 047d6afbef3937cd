"""The agent side of a task: listing, running output, terminal reports, history, offline.

The rules (which report wins, what status follows) are server/lifecycle.py; this module reads
a task's row, asks the lifecycle, and writes the answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import text

from server import lifecycle, model
from server.store.access import NonceClaim
from server.store.conn import Conn
from server.store.rows import Row, _one, _rows, numbered, numbered_params, sql_text

# The agent API's hot path: prepared text statements (valid on SQLite and PostgreSQL), so a
# request costs a few cheap executes instead of building and caching SQL constructs each time.

_TASKS_FOR = text(
    "SELECT ii.stop_requested, ii.delivered, inv.* FROM invocation_instances ii "
    "JOIN invocations inv ON inv.invoke_id = ii.invoke_id "
    "WHERE ii.instance_id = :id AND ii.active = :yes ORDER BY inv.created_ms"
)
_MARK_DELIVERED = text(
    "UPDATE invocation_instances SET delivered = :yes WHERE instance_id = :id AND invoke_id = :invoke"
)


async def tasks_for(conn: Conn, instance_id: str) -> tuple[list[Row], list[str]]:
    """Tasks an instance should have, and invocations it should stop; marks them delivered."""
    rows = await _rows(conn, _TASKS_FOR, {"id": instance_id, "yes": True})
    run = [r for r in rows if not r["stop_requested"]]
    stop = [r["invoke_id"] for r in rows if r["stop_requested"]]
    fresh = [r["invoke_id"] for r in run if not r["delivered"]]
    for invoke_id in fresh:  # usually one: what arrived since the last listing
        await conn.execute(_MARK_DELIVERED, {"yes": True, "id": instance_id, "invoke": invoke_id})
    return run, stop


async def claim_delivered(conn: Conn, invoke_id: str, instance_ids: Sequence[str]) -> set[str]:
    """Mark an invocation delivered to many instances whose kick is to carry its task; the ids
    marked. A row no longer active or asked to stop is left alone: its kick must not carry a
    task the server has already settled (server/agent_api/batch.py)."""
    claimed: set[str] = set()
    for start in range(0, len(instance_ids), 500):
        chunk = instance_ids[start : start + 500]
        sql = (
            "UPDATE invocation_instances SET delivered = :yes WHERE invoke_id = :invoke "
            f"AND instance_id IN ({numbered(':i{i}', len(chunk))}) "
            "AND active = :yes AND stop_requested = :no RETURNING instance_id"
        )
        params = {"yes": True, "no": False, "invoke": invoke_id, **numbered_params("i", chunk)}
        result = await conn.execute(sql_text(sql), params)
        claimed.update(str(row[0]) for row in result)
    return claimed


# What the lifecycle reads of a task (_task), nothing more: the row also holds the output.
_RESULT_ROW = text(
    "SELECT ii.status, ii.active, ii.execution_id, ii.delivered, ii.stop_requested, ii.stop_ms, "
    "inv.timed, inv.repeat_mode, inv.frequency FROM invocation_instances ii "
    "JOIN invocations inv ON inv.invoke_id = ii.invoke_id "
    "WHERE ii.instance_id = :instance AND ii.invoke_id = :invoke"
)


async def _result_row(conn: Conn, instance_id: str, invoke_id: str) -> lifecycle.Task | None:
    """The lifecycle's view of a task, None if the instance has no such task."""
    found = await conn.execute(_RESULT_ROW, {"instance": instance_id, "invoke": invoke_id})
    row = found.first()
    if row is None:
        return None
    status, active, execution_id, delivered, stop_requested, stop_ms, timed, mode, every = row
    return lifecycle.Task(
        status=status,
        active=bool(active),
        execution_id=execution_id,
        delivered=bool(delivered),
        stop_requested=bool(stop_requested),
        timed=bool(timed),
        repeat_mode=mode,
        frequency=every,
        stop_ms=stop_ms,
    )


_START_EXECUTION = text(
    "INSERT INTO executions (invoke_id, instance_id, execution_id, status, terminal, start_ms) "
    "VALUES (:invoke, :instance, :execution, :status, :no, :start) ON CONFLICT DO NOTHING"
)
_EXECUTION_DONE = text(
    "SELECT terminal FROM executions "
    "WHERE invoke_id = :invoke AND instance_id = :instance AND execution_id = :execution"
)
_ADD_CHUNK = text(
    "INSERT INTO output_chunks (invoke_id, instance_id, execution_id, chunk_offset, data) "
    "VALUES (:invoke, :instance, :execution, :offset, :data) ON CONFLICT DO NOTHING"
)
_MARK_RUNNING = text(
    "UPDATE invocation_instances SET status = :status, updated_ms = :now "
    "WHERE instance_id = :instance AND invoke_id = :invoke"
)
_NEW_EXECUTION = text(
    "UPDATE invocation_instances SET status = :status, updated_ms = :now, "
    "execution_id = :execution, start_ms = :start, exit_code = NULL, output = '', dropped = 0, "
    "error_code = '', error_info = '', finish_ms = NULL "
    "WHERE instance_id = :instance AND invoke_id = :invoke"
)


async def record_running(
    conn: Conn,
    instance_id: str,
    invoke_id: str,
    execution_id: str,
    start_ms: int,
    offset: int,
    data: str,
) -> bool:
    """Store a running-output chunk once per offset and mark the execution Running."""
    task = await _result_row(conn, instance_id, invoke_id)
    if task is None:
        return False
    key = {"invoke": invoke_id, "instance": instance_id, "execution": execution_id}
    await conn.execute(
        _START_EXECUTION, {**key, "status": lifecycle.RUNNING, "no": False, "start": start_ms}
    )
    done = await _one(conn, _EXECUTION_DONE, key)
    if done and done["terminal"]:
        return True  # a late chunk of a finished execution changes nothing
    if data:
        await conn.execute(_ADD_CHUNK, {**key, "offset": offset, "data": data})
    step = lifecycle.on_running(task, execution_id)
    if step != lifecycle.KEEP:
        params = {**key, "status": lifecycle.RUNNING, "now": model.now_ms(), "start": start_ms}
        statement = _MARK_RUNNING if step == lifecycle.MARK_RUNNING else _NEW_EXECUTION
        await conn.execute(statement, params)
    return True


# First terminal report wins: insert, or update a non-terminal row; 0 rows means a repeat.
_EXECUTION_COLUMNS = (
    "INSERT INTO executions (invoke_id, instance_id, execution_id, status, terminal, exit_code, "
    "start_ms, finish_ms, output, dropped, error_code, error_info) "
)
_FIRST_TERMINAL_WINS = (
    "ON CONFLICT (invoke_id, instance_id, execution_id) DO UPDATE SET "
    "status = excluded.status, terminal = excluded.terminal, exit_code = excluded.exit_code, "
    "start_ms = excluded.start_ms, finish_ms = excluded.finish_ms, output = excluded.output, "
    "dropped = excluded.dropped, error_code = excluded.error_code, "
    "error_info = excluded.error_info WHERE executions.terminal = :no "
    # …or it holds the server's offline guess (lifecycle.inferred), which a real report replaces
    "OR (executions.error_code = :inferred AND executions.exit_code IS NULL)"
)
_FINISH_EXECUTION = text(
    _EXECUTION_COLUMNS
    + "VALUES (:invoke, :instance, :execution, :status, :yes, :exit_code, :start, :finish, "
    ":output, :dropped, :error_code, :error_info) " + _FIRST_TERMINAL_WINS
)
_APPLY_RESULT = text(
    "UPDATE invocation_instances SET repeats = repeats + 1, updated_ms = :now, "
    "execution_id = :execution, exit_code = :exit_code, output = :output, dropped = :dropped, "
    "error_code = :error_code, error_info = :error_info, start_ms = :start, "
    "finish_ms = :finish, status = :status, active = :active, stop_ms = :stop "
    "WHERE instance_id = :instance AND invoke_id = :invoke"
)
_COUNT_REPEAT = text(
    "UPDATE invocation_instances SET repeats = repeats + 1, updated_ms = :now "
    "WHERE instance_id = :instance AND invoke_id = :invoke"
)
_DROP_CHUNKS = text(
    "DELETE FROM output_chunks "
    "WHERE invoke_id = :invoke AND instance_id = :instance AND execution_id = :execution"
)


# PostgreSQL writes a terminal report as one statement (data-modifying WITH): the execution,
# then, only if it won, the task row and the dropped chunks; the lifecycle's answer is known
# from the row read before. Two round trips a report instead of four (docs/scale.md, Ingestion).
_WON_CTE = "WITH won AS (" + _FINISH_EXECUTION.text + " RETURNING 1)"
_IF_WON = " AND EXISTS (SELECT 1 FROM won)"
_NONCE_CTE = (
    "WITH nonce AS (INSERT INTO nonces (nonce, expires) VALUES (:nonce, :expires) "
    "ON CONFLICT DO NOTHING RETURNING 1), "
)
_TERMINAL_PG = {
    (latest, drop, with_nonce): text(
        (_NONCE_CTE + _WON_CTE.removeprefix("WITH ") if with_nonce else _WON_CTE)
        + ", task AS ("
        # the task's status may differ from the execution's (a timed task goes on Scheduled)
        + (_APPLY_RESULT if latest else _COUNT_REPEAT).text.replace(":status", ":task_status")
        + _IF_WON
        + " RETURNING 1)"
        + (", chunks AS (" + _DROP_CHUNKS.text + _IF_WON + " RETURNING 1)" if drop else "")
        + " SELECT (SELECT count(*) FROM won) AS won"
        + (", (SELECT count(*) FROM nonce) AS fresh" if with_nonce else "")
    )
    for latest in (True, False)
    for drop in (True, False)
    for with_nonce in (True, False)
}


ONE_SHOT_STATEMENT = True  # False: every report takes the general path (the tests compare them)

# PostgreSQL's common case in ONE statement, the task row's read included: a one-shot task's
# report of its current (or first) execution. The lifecycle's answer is then the same whatever
# else the row holds (lifecycle.on_terminal: it ends with the report's status; the streamed
# chunks go if it had reported running or another execution), so the statement needs no row
# read first: it writes only if the row is such a task (`task`), and says so (`matched`). A
# report it did not match (a timed task, another execution, an unknown task) takes the general
# path: the row read, then the statement above. The two paths give the same rows
# (tests/server/test_report_paths.py).
_ONE_SHOT_PG = text(
    "WITH nonce AS (INSERT INTO nonces (nonce, expires) SELECT :nonce, CAST(:expires AS BIGINT) "
    "WHERE CAST(:with_nonce AS BOOLEAN) ON CONFLICT DO NOTHING RETURNING 1), "
    "task AS (SELECT ii.status, ii.execution_id FROM invocation_instances ii "
    "JOIN invocations inv ON inv.invoke_id = ii.invoke_id "
    "WHERE ii.instance_id = :instance AND ii.invoke_id = :invoke AND inv.timed = :no "
    "AND ii.execution_id IN ('', :execution)), "
    "won AS ("
    + _EXECUTION_COLUMNS
    # the values only if the row is such a task (SELECT … FROM task), typed as VALUES are
    + "SELECT :invoke, :instance, :execution, :status, CAST(:yes AS BOOLEAN), "
    "CAST(:exit_code AS BIGINT), CAST(:start AS BIGINT), CAST(:finish AS BIGINT), :output, "
    "CAST(:dropped AS BIGINT), :error_code, :error_info FROM task "
    + _FIRST_TERMINAL_WINS
    + " RETURNING 1), "
    "applied AS ("
    + _APPLY_RESULT.text.replace(":status", ":task_status").replace(
        "stop_ms = :stop", "stop_ms = COALESCE(CAST(:stop AS BIGINT), stop_ms)"
    )
    + _IF_WON
    + " RETURNING 1), "
    "chunks AS ("
    + _DROP_CHUNKS.text
    + _IF_WON
    + " AND EXISTS (SELECT 1 FROM task WHERE task.status IN (:running, :stopping) "
    "OR task.execution_id <> :execution) RETURNING 1) "
    "SELECT (SELECT count(*) FROM task) AS matched, (SELECT count(*) FROM won) AS won, "
    "(SELECT count(*) FROM nonce) AS fresh"
)


async def _one_shot_pg(
    conn: Conn, params: dict[str, object], status: str, now: int, nonce: NonceClaim | None
) -> bool | None:
    """_ONE_SHOT_PG: True if a duplicate, False if applied, None if it did not match."""
    execution = str(params["execution"])
    # a one-shot task's first or current execution: what the lifecycle answers for any such row
    finish = lifecycle.on_terminal(lifecycle.Task(lifecycle.PENDING), execution, status, now)
    taken = nonce if nonce is not None and nonce.fresh is None else None
    row = (
        await conn.execute(
            _ONE_SHOT_PG,
            {
                **params,
                "task_status": finish.status,
                "active": finish.active,
                "stop": finish.stop_ms,
                "running": lifecycle.RUNNING,
                "stopping": lifecycle.STOPPING,
                "with_nonce": taken is not None,
                "nonce": taken.key if taken else "",
                "expires": taken.expires if taken else 0,
            },
        )
    ).first()
    matched, won, fresh = row if row is not None else (0, 0, 0)
    if taken is not None:
        taken.fresh = bool(fresh)
    if not matched:
        return None
    return not won


async def record_terminal(
    conn: Conn,
    instance_id: str,
    invoke_id: str,
    execution_id: str,
    status: str,
    report: Row,
    nonce: NonceClaim | None = None,
) -> bool | None:
    """Apply a terminal report; True if it was a duplicate, None if the task is unknown.
    On PostgreSQL the request's nonce, if not recorded yet, goes into the same statement."""
    key = {"invoke": invoke_id, "instance": instance_id, "execution": execution_id}
    fields = {
        "exit_code": report["exit_code"],
        "start": report["start_ms"],
        "finish": report["finish_ms"],
        "output": report["output"],
        "dropped": report["dropped"],
        "error_code": report["error_code"],
        "error_info": report["error_info"],
    }
    now = model.now_ms()
    execution = {**key, **fields, "status": status, "yes": True, "no": False}
    execution["inferred"] = lifecycle.OFFLINE_ERROR
    result = {**key, **fields, "now": now}
    if conn.dialect.name == "postgresql" and ONE_SHOT_STATEMENT:
        done = await _one_shot_pg(conn, {**execution, **result}, status, now, nonce)
        if done is not None:
            return done
    task = await _result_row(conn, instance_id, invoke_id)
    if task is None:
        return None
    finish = lifecycle.on_terminal(task, execution_id, status, now)
    if finish.latest:
        result.update(active=finish.active, stop=finish.stop_ms, task_status=finish.status)
    if conn.dialect.name == "postgresql":
        taken = nonce if nonce is not None and nonce.fresh is None else None
        drop = finish.latest and finish.drop_chunks
        params = {**execution, **result}
        if taken is not None:
            params.update(nonce=taken.key, expires=taken.expires)
        statement = _TERMINAL_PG[finish.latest, drop, taken is not None]
        counted = (await conn.execute(statement, params)).first()
        if taken is not None:
            taken.fresh = bool(counted and counted[1])
        return not (counted and counted[0])
    won = await conn.execute(_FINISH_EXECUTION, execution)
    if not won.rowcount:
        return True
    if not finish.latest:
        await conn.execute(_COUNT_REPEAT, {**key, "now": now})  # a late, older execution
        return False
    await conn.execute(_APPLY_RESULT, {**result, "status": finish.status})
    if finish.drop_chunks:
        await conn.execute(_DROP_CHUNKS, key)
    return False


# Finished runs of timed invocations, other than each task's latest (which its
# invocation_instances row mirrors): older than the cutoff, or beyond the newest `keep`.
_PURGE_OLD_EXECUTIONS = text(
    "DELETE FROM executions WHERE terminal = :yes AND finish_ms < CAST(:cutoff AS BIGINT) "
    "AND NOT EXISTS (SELECT 1 FROM invocation_instances ii WHERE ii.invoke_id = "
    "executions.invoke_id AND ii.instance_id = executions.instance_id "
    "AND ii.execution_id = executions.execution_id)"
)
_PURGE_EXTRA_EXECUTIONS = text(
    "DELETE FROM executions WHERE (invoke_id, instance_id, execution_id) IN ("
    "SELECT invoke_id, instance_id, execution_id FROM (SELECT e.invoke_id, e.instance_id, "
    "e.execution_id, e.terminal, ROW_NUMBER() OVER (PARTITION BY e.invoke_id, e.instance_id "
    "ORDER BY COALESCE(e.finish_ms, e.start_ms, 0) DESC, e.execution_id DESC) AS newest "
    "FROM executions e) ranked WHERE ranked.newest > CAST(:keep AS BIGINT) "
    "AND ranked.terminal = :yes) "
    "AND NOT EXISTS (SELECT 1 FROM invocation_instances ii WHERE ii.invoke_id = "
    "executions.invoke_id AND ii.instance_id = executions.instance_id "
    "AND ii.execution_id = executions.execution_id)"
)


async def purge_history(conn: Conn, cutoff_ms: int, keep: int) -> int:
    """Forget finished executions older than cutoff_ms or beyond the newest `keep` per task."""
    old = await conn.execute(_PURGE_OLD_EXECUTIONS, {"yes": True, "cutoff": cutoff_ms})
    extra = await conn.execute(_PURGE_EXTRA_EXECUTIONS, {"yes": True, "keep": keep})
    return max(old.rowcount, 0) + max(extra.rowcount, 0)


OFFLINE_ERROR = lifecycle.OFFLINE_ERROR

# One-shot tasks past their deadline (started, or created if never started, + Timeout + grace)
# on instances not heard from within three heartbeat intervals: nobody will report them.
_ABANDONED = text(
    "SELECT ii.invoke_id, ii.instance_id, ii.execution_id FROM invocation_instances ii "
    "JOIN invocations inv ON inv.invoke_id = ii.invoke_id "
    "JOIN instances i ON i.instance_id = ii.instance_id "
    "WHERE ii.active = :yes AND inv.timed = :no AND ii.status IN (:pending, :running, :stopping) "
    "AND i.last_seen_ms < CAST(:now AS BIGINT) - 3000 * i.heartbeat_interval "
    "AND COALESCE(ii.start_ms, ii.created_ms) + 1000 * inv.timeout + CAST(:grace AS BIGINT) "
    "< CAST(:now AS BIGINT)"
)
_FAIL_EXECUTION = text(
    "INSERT INTO executions (invoke_id, instance_id, execution_id, status, terminal, "
    "finish_ms, error_code, error_info) VALUES (:invoke, :instance, :execution, :status, :yes, "
    ":now, :error_code, :error_info) ON CONFLICT (invoke_id, instance_id, execution_id) "
    "DO UPDATE SET status = excluded.status, terminal = excluded.terminal, "
    "finish_ms = excluded.finish_ms, error_code = excluded.error_code, "
    "error_info = excluded.error_info WHERE executions.terminal = :no"
)
_FAIL_TASK = text(
    "UPDATE invocation_instances SET status = :status, active = :no, execution_id = :execution, "
    "error_code = :error_code, error_info = :error_info, finish_ms = :now, updated_ms = :now "
    "WHERE invoke_id = :invoke AND instance_id = :instance AND active = :yes"
)


async def fail_abandoned_tasks(conn: Conn, now_ms: int, grace_ms: int) -> list[tuple[str, str]]:
    """Mark one-shot tasks of long-offline instances Failed (InstanceOffline); return them."""
    flags = {"yes": True, "no": False}
    pending, running, stopping = lifecycle.UNFINISHED
    statuses = {"pending": pending, "running": running, "stopping": stopping}
    rows = await _rows(conn, _ABANDONED, {**flags, **statuses, "now": now_ms, "grace": grace_ms})
    status, error_code, error_info = lifecycle.on_offline()
    failed: list[tuple[str, str]] = []
    for row in rows:
        values = {
            **flags,
            "invoke": row["invoke_id"],
            "instance": row["instance_id"],
            "execution": row["execution_id"] or "0",  # a one-shot task's only execution
            "status": status,
            "now": now_ms,
            "error_code": error_code,
            "error_info": error_info,
        }
        if not (await conn.execute(_FAIL_EXECUTION, values)).rowcount:
            continue  # its terminal report arrived meanwhile: that result stands
        await conn.execute(_FAIL_TASK, values)
        await conn.execute(_DROP_CHUNKS, values)
        failed.append((row["invoke_id"], row["instance_id"]))
    return failed
