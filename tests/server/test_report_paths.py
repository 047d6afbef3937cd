"""PostgreSQL's one-statement terminal report (server/store/tasks.py _ONE_SHOT_PG) against the
general path (the task row read, the lifecycle's answer, then the write): for every kind of task
state a report can meet, both leave the same rows and give the same answer."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, NamedTuple

import pytest
from sqlalchemy import text

from server import lifecycle, model
from server.store import tasks
from server.store.access import NonceClaim
from server.store.db import Store

pytestmark = pytest.mark.postgres

NOW = 1_700_000_000_000

RUNNING_0 = ("0", "Running", False, "", None)  # an executions row (State.executions)


class State(NamedTuple):
    """A task's rows before a report, the report, and what the one statement does with the
    report and its repeat: applied (False), a duplicate (True), or left to the general path."""

    name: str
    timed: bool
    status: str  # the task's
    active: bool
    execution_id: str  # the task's latest execution
    executions: list[tuple[Any, ...]]  # (execution_id, status, terminal, error_code, exit_code)
    chunks: list[str]  # execution ids with streamed output
    report: tuple[str, str]  # (execution_id, status)
    one_statement_took: list[bool | None]


STATES = [
    State("pending, never ran", False, "Pending", True, "", [], [], ("0", "Success"),
          [False, True]),
    State("running, streamed", False, "Running", True, "0", [RUNNING_0], ["0"],
          ("0", "Failed"), [False, True]),
    State("stopping", False, "Stopping", True, "0", [RUNNING_0], ["0"], ("0", "Terminated"),
          [False, True]),
    State("stopped before it started", False, "Pending", True, "", [], [], ("0", "Stopped"),
          [False, True]),
    State("a chunk kept while stopping", False, "Stopping", True, "", [RUNNING_0], ["0"],
          ("0", "Success"), [False, True]),
    # the real report replaces the guess
    State("failed offline (a guess)", False, "Failed", False, "0",
          [("0", "Failed", True, lifecycle.OFFLINE_ERROR, None)], [], ("0", "Success"),
          [False, True]),
    State("already reported", False, "Success", False, "0", [("0", "Success", True, "", 0)], [],
          ("0", "Failed"), [True, True]),
    # the general path makes "1" the current execution; its repeat then matches
    State("another execution", False, "Running", True, "0", [RUNNING_0], ["0"],
          ("1", "Success"), [None, True]),
    State("periodic, next fire time", True, "Scheduled", True, "5",
          [("5", "Success", True, "", 0)], [], ("6", "Success"), [None, None]),
    State("periodic, running", True, "Running", True, "6", [("6", "Running", False, "", None)],
          ["6"], ("6", "Success"), [None, None]),
]  # fmt: skip


async def _seed(store: Store, instance: str, state: State) -> None:
    timed, status, active = state.timed, state.status, state.active
    invoke = f"t-{instance}"

    async def tx(conn: Any) -> None:
        await conn.execute(
            text(
                "INSERT INTO invocations (invoke_id, account, command_id, command_name, "
                "command_type, command_description, content, parameters, timed, repeat_mode, "
                "frequency, username, working_dir, timeout, created, created_ms, revision, "
                "stopped) VALUES (:invoke, 'a', 'c-1', 'n', 'RunShellScript', '', 'ZWNobw==', "
                "'{}', :timed, :mode, :frequency, '', '', 60, 'x', 1, 1, false)"
            ),
            {
                "invoke": invoke,
                "timed": timed,
                "mode": "Period" if timed else "Once",
                "frequency": "rate(5m)" if timed else "",
            },
        )
        await conn.execute(
            text(
                "INSERT INTO invocation_instances (invoke_id, instance_id, account, status, "
                "active, delivered, stop_requested, execution_id, output, dropped, error_code, "
                "error_info, repeats, created_ms, updated_ms, stop_ms) VALUES (:invoke, "
                ":instance, 'a', :status, :active, true, :stop, :execution, '', 0, '', '', 0, 1, "
                "1, NULL)"
            ),
            {
                "invoke": invoke,
                "instance": instance,
                "status": status,
                "active": active,
                "stop": status == "Stopping",
                "execution": state.execution_id,
            },
        )
        for ex_id, ex_status, terminal, error_code, exit_code in state.executions:
            await conn.execute(
                text(
                    "INSERT INTO executions (invoke_id, instance_id, execution_id, status, "
                    "terminal, exit_code, error_code) VALUES (:invoke, :instance, :ex, :status, "
                    ":terminal, :exit_code, :error_code)"
                ),
                {
                    "invoke": invoke,
                    "instance": instance,
                    "ex": ex_id,
                    "status": ex_status,
                    "terminal": terminal,
                    "exit_code": exit_code,
                    "error_code": error_code,
                },
            )
        for ex_id in state.chunks:
            await conn.execute(
                text(
                    "INSERT INTO output_chunks (invoke_id, instance_id, execution_id, "
                    "chunk_offset, data) VALUES (:invoke, :instance, :ex, 0, 'MTIz')"
                ),
                {"invoke": invoke, "instance": instance, "ex": ex_id},
            )

    await store.write(tx)


async def _report(store: Store, instance: str, state: State, invoke: str = "") -> Any:
    execution_id, status = state.report
    report = {
        "exit_code": 0 if status == "Success" else 1,
        "start_ms": 5 if status != "Stopped" else None,
        "finish_ms": 9,
        "output": "MTIzCg==",
        "dropped": 0,
        "error_code": "",
        "error_info": "",
    }
    nonce = NonceClaim(f"n-{instance}-{uuid.uuid4().hex}", NOW)

    async def tx(conn: Any) -> Any:
        answer = await tasks.record_terminal(
            conn, instance, invoke or f"t-{instance}", execution_id, status, report, nonce
        )
        if nonce.fresh is None:  # the caller records it when no statement took it along
            nonce.fresh = True
        return answer, nonce.fresh

    return await store.write(tx)


async def _rows(store: Store, instance: str) -> dict[str, Any]:
    async def tx(conn: Any) -> dict[str, Any]:
        found = {}
        for table, order in (
            ("invocation_instances", "invoke_id"),
            ("executions", "execution_id"),
            ("output_chunks", "execution_id"),
        ):
            result = await conn.execute(
                text(f"SELECT * FROM {table} WHERE instance_id = :i ORDER BY {order}"),
                {"i": instance},
            )
            found[table] = [
                {k: v for k, v in row._mapping.items() if k not in ("instance_id", "invoke_id")}
                for row in result
            ]
        return found

    return await store.read(tx)


@pytest.mark.parametrize("state", STATES, ids=[s.name for s in STATES])
def test_the_one_statement_report_leaves_what_the_general_path_leaves(
    pg_url: str, state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model, "now_ms", lambda: NOW)
    tag = state.name.replace(" ", "-").replace(",", "").replace("(", "").replace(")", "")

    async def scenario() -> tuple[Any, ...]:
        store = Store(pg_url)
        try:
            await store.migrate()
            outcomes: list[Any] = []
            real = tasks._one_shot_pg

            async def recorded(*args: Any) -> Any:
                matched.append(await real(*args))
                return matched[-1]

            monkeypatch.setattr(tasks, "_one_shot_pg", recorded)
            for one_statement in (True, False):
                monkeypatch.setattr(tasks, "ONE_SHOT_STATEMENT", one_statement)
                instance = f"i-{tag}-{one_statement}-{id(outcomes)}"
                await _seed(store, instance, state)
                answer = await _report(store, instance, state)
                again = await _report(store, instance, state)  # a repeat of it
                outcomes.append((answer, again, await _rows(store, instance)))
            return tuple(outcomes)
        finally:
            await store.close()

    matched: list[Any] = []
    fast, general = asyncio.run(scenario())
    assert fast == general
    # what the one statement did with the report and its repeat: applied (False), a duplicate
    # (True), or left to the general path (None)
    assert matched == state.one_statement_took
    answer, again, _ = fast
    assert again[0] is True  # a repeat is a duplicate on either path


def test_a_report_for_an_unknown_task_is_unknown_on_the_one_statement_path(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "ONE_SHOT_STATEMENT", True)

    async def scenario() -> Any:
        store = Store(pg_url)
        try:
            await store.migrate()
            return await _report(store, "i-nobody", STATES[0], invoke="t-nobody")
        finally:
            await store.close()

    answer, fresh = asyncio.run(scenario())
    assert answer is None and fresh is True
