"""DescribeInvocationResults IncludeHistory: one result per execution of a timed invocation."""

from __future__ import annotations

import base64
import sqlite3
import time
from pathlib import Path

import pytest
from serverkit import Api, migrate_sqlite, run_sql

from devkit.server import FakeAgent, launch_server
from server.store.migrations import LATEST

HOUR = 3600


def timed_invocation(api: Api, *agents: FakeAgent) -> str:
    command_id = api.ok(
        "CreateCommand", Name="t", Type="RunShellScript", CommandContent="ZWNobyAx"
    )["CommandId"]
    ids = {f"InstanceId.{i}": a.instance_id for i, a in enumerate(agents, 1)}
    body = api.ok("InvokeCommand", CommandId=command_id, Timed="true", Frequency="rate(1h)", **ids)
    return str(body["InvokeId"])


def run_fire(agent: FakeAgent, invoke_id: str, fire: int, output: bytes, exit_code: int) -> None:
    """One execution of a timed task, named by its fire time as the agent names it."""
    agent.report(
        "finish",
        invoke_id,
        output,
        exit_code,
        execution_id=str(fire),
        start_time=fire * 1000,
        end_time=fire * 1000 + 500,
    )


def results(api: Api, **params: str) -> dict:
    return dict(api.ok("DescribeInvocationResults", **params)["Invocation"])


def items(body: dict) -> list[dict]:
    return list(body["InvocationResults"]["InvocationResult"])


def test_include_history_lists_every_execution_newest_first(api: Api) -> None:
    ran, idle = api.agent(), api.agent()
    invoke_id = timed_invocation(api, ran, idle)
    now = int(time.time())
    fires = [now - 4 * HOUR, now - 3 * HOUR, now - 2 * HOUR]
    for n, fire in enumerate(fires):
        run_fire(ran, invoke_id, fire, f"run {n}\n".encode(), n % 2)
    going = now - HOUR  # a fourth run, still going: its streamed output shows
    ran.post(
        "/luban/api/v1/task/running",
        {
            "invoke_id": invoke_id,
            "execution_id": str(going),
            "start_time": going * 1000,
            "offset": 0,
            "output": base64.b64encode(b"half").decode(),
        },
    )

    history = results(api, InvokeId=invoke_id, IncludeHistory="true", PageSize="50")
    got = [
        (
            i["InstanceId"],
            i["InvocationStatus"],
            i["ExitCode"],
            base64.b64decode(i["Output"]),
            i["StartTime"],
        )
        for i in items(history)
    ]
    iso = time.strftime
    stamp = [iso("%Y-%m-%dT%H:%M:%SZ", time.gmtime(f)) for f in [*fires, going]]
    assert history["TotalCount"] == 5
    assert got == [
        (idle.instance_id, "Scheduled", 0, b"", ""),  # not run yet: its pending row
        (ran.instance_id, "Running", 0, b"half", stamp[3]),
        (ran.instance_id, "Success", 0, b"run 2\n", stamp[2]),
        (ran.instance_id, "Failed", 1, b"run 1\n", stamp[1]),
        (ran.instance_id, "Success", 0, b"run 0\n", stamp[0]),
    ]
    # every run keeps its own result in the database, not only the latest
    rows = run_sql(
        api.server,
        "SELECT execution_id, status, exit_code FROM executions WHERE invoke_id = ? "
        "ORDER BY execution_id",
        invoke_id,
    )
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (str(fires[0]), "Success", 0),
        (str(fires[1]), "Failed", 1),
        (str(fires[2]), "Success", 0),
        (str(going), "Running", None),
    ]

    # pages of 2 cover the same list in the same order
    paged: list[dict] = []
    for number in (1, 2, 3):
        page = results(
            api, InvokeId=invoke_id, IncludeHistory="true", PageSize="2", PageNumber=str(number)
        )
        assert (page["TotalCount"], page["PageNumber"], page["PageSize"]) == (5, number, 2)
        paged += items(page)
    assert paged == items(history)

    # filters apply per execution
    failed = results(api, InvokeId=invoke_id, IncludeHistory="true", InvokeRecordStatus="Failed")
    assert [(i["ExitCode"], i["InvocationStatus"]) for i in items(failed)] == [(1, "Failed")]
    one = results(api, InvokeId=invoke_id, IncludeHistory="true", InstanceId=idle.instance_id)
    assert [i["InvocationStatus"] for i in items(one)] == ["Scheduled"]


def test_without_history_the_latest_per_instance(api: Api) -> None:
    ran, idle = api.agent(), api.agent()
    invoke_id = timed_invocation(api, ran, idle)
    now = int(time.time())
    run_fire(ran, invoke_id, now - 2 * HOUR, b"old\n", 3)
    run_fire(ran, invoke_id, now - HOUR, b"new\n", 0)
    for params in ({}, {"IncludeHistory": "false"}):
        body = results(api, InvokeId=invoke_id, **params)
        assert body["TotalCount"] == 2
        by_instance = {i["InstanceId"]: i for i in items(body)}
        latest = by_instance[ran.instance_id]
        assert (latest["Repeats"], base64.b64decode(latest["Output"])) == (2, b"new\n")
        assert by_instance[idle.instance_id]["InvocationStatus"] == "Scheduled"
    assert api.error(
        "DescribeInvocationResults", InvokeId=invoke_id, IncludeHistory="sometimes"
    ) == (400, "InvalidParameter")


def test_one_shot_invocation_history_is_its_single_run(api: Api) -> None:
    agent = api.agent()
    command_id = api.ok(
        "CreateCommand", Name="o", Type="RunShellScript", CommandContent="ZWNobyAx"
    )["CommandId"]
    invoke_id = api.ok(
        "InvokeCommand", CommandId=command_id, **{"InstanceId.1": agent.instance_id}
    )["InvokeId"]
    pending = items(results(api, InvokeId=invoke_id, IncludeHistory="true"))
    assert [i["InvocationStatus"] for i in pending] == ["Pending"]
    agent.report("error", invoke_id, b"", None, error_code="UserNotExist", error_message="no")
    done = items(results(api, InvokeId=invoke_id, IncludeHistory="true"))
    assert [(i["InvocationStatus"], i["ErrorCode"], i["ErrorInfo"]) for i in done] == [
        ("Failed", "UserNotExist", "no")
    ]


def test_version_1_database_migrates_to_execution_history(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    migrate_sqlite(db)
    with sqlite3.connect(db) as conn:  # make it what a version-1 server left behind
        for column in ("output", "dropped", "error_code", "error_info"):
            conn.execute(f"ALTER TABLE executions DROP COLUMN {column}")
        conn.execute("INSERT INTO executions VALUES ('t-1', 'mi-1', '0', 'Success', 1, 0, 1, 2)")
        conn.execute("UPDATE schema_version SET version = 1")
    assert migrate_sqlite(db) == {"before": 1, "after": LATEST}
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT status, output, dropped, error_code, error_info FROM executions"
        ).fetchall()
    assert row == [("Success", "", 0, "", "")]


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_history_past_its_limits_is_forgotten(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """--history-days and --history-keep bound the stored runs of a timed invocation; each
    task's latest run (and every other task's history) stays."""
    db_url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    server = launch_server(
        tmp_path / "server",
        db_url=db_url,
        extra_args=["--chores-interval", "0.3", "--history-days", "7", "--history-keep", "2"],
    )
    try:
        key_id, secret = server.create_access_key("history")
        api = Api(server, key_id, secret)
        agent, other = api.agent(), api.agent()
        invoke_id = timed_invocation(api, agent, other)
        now = int(time.time())
        fires = [now - 40 * 24 * HOUR, now - 3 * HOUR, now - 2 * HOUR, now - HOUR]
        for n, fire in enumerate(fires):
            run_fire(agent, invoke_id, fire, f"run {n}\n".encode(), 0)
        run_fire(other, invoke_id, now - 30 * 24 * HOUR, b"only run\n", 0)  # its latest: kept

        def kept() -> list[tuple[str, str]]:
            body = results(api, InvokeId=invoke_id, IncludeHistory="true", PageSize="50")
            return [(i["InstanceId"], base64.b64decode(i["Output"]).decode()) for i in items(body)]

        deadline = time.monotonic() + 20
        while len(kept()) > 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(kept()) == sorted(
            [
                (agent.instance_id, "run 3\n"),
                (agent.instance_id, "run 2\n"),
                (other.instance_id, "only run\n"),
            ]
        )
    finally:
        server.stop()
