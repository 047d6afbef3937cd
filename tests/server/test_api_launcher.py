"""Launcher and TerminationMode on the operator API: stored, inherited, shown by the Describe*
calls, sent to the agent, checked with the real API's error codes; and the schema step that
adds them (with the managed instances' region) to a database of version 12."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

import pytest
from serverkit import Api, migrate_sqlite, run_sql

from server.store.migrations import LATEST


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def create(api: Api, **params: str) -> str:
    return str(
        api.ok(
            "CreateCommand", Name="l", Type="RunShellScript", CommandContent=b64("id"), **params
        )["CommandId"]
    )


def test_launcher_and_termination_mode_reach_describe_and_the_agent(api: Api) -> None:
    agent = api.agent()
    command_id = create(api, Launcher='python3 -u {{ACS::ScriptFileName|Ext(".py")}}')
    [command] = api.ok("DescribeCommands", CommandId=command_id)["Commands"]["Command"]
    assert command["Launcher"] == 'python3 -u {{ACS::ScriptFileName|Ext(".py")}}'

    inherited = api.ok(
        "InvokeCommand",
        CommandId=command_id,
        TerminationMode="processtree",  # any case, as the real API's enums
        **{"InstanceId.1": agent.instance_id},
    )["InvokeId"]
    overridden = api.ok(
        "InvokeCommand",
        CommandId=command_id,
        Launcher="/bin/sh -x",
        **{"InstanceId.1": agent.instance_id},
    )["InvokeId"]
    listed = {
        i["InvokeId"]: (i["Launcher"], i["TerminationMode"])
        for i in api.ok("DescribeInvocations")["Invocations"]["Invocation"]
    }
    assert listed[inherited] == (command["Launcher"], "ProcessTree")
    assert listed[overridden] == ("/bin/sh -x", "Process")
    results = api.ok("DescribeInvocationResults", InvokeId=inherited)["Invocation"]
    [item] = results["InvocationResults"]["InvocationResult"]
    assert (item["Launcher"], item["TerminationMode"]) == (command["Launcher"], "ProcessTree")

    tasks = {t["invoke_id"]: t for t in agent.tasks()["run"]}
    assert (tasks[inherited]["launcher"], tasks[inherited]["termination_mode"]) == (
        command["Launcher"],
        "ProcessTree",
    )
    assert (tasks[overridden]["launcher"], tasks[overridden]["termination_mode"]) == (
        "/bin/sh -x",
        "Process",
    )

    api.ok("ModifyCommand", CommandId=command_id, Launcher="/bin/bash")
    [command] = api.ok("DescribeCommands", CommandId=command_id)["Commands"]["Command"]
    assert command["Launcher"] == "/bin/bash"
    ran = api.ok(
        "RunCommand",
        Type="RunShellScript",
        CommandContent=b64("id"),
        Launcher="env A=1 /bin/sh",
        TerminationMode="ProcessTree",
        **{"InstanceId.1": agent.instance_id},
    )["InvokeId"]
    [row] = api.ok("DescribeInvocations", InvokeId=ran)["Invocations"]["Invocation"]
    assert (row["Launcher"], row["TerminationMode"]) == ("env A=1 /bin/sh", "ProcessTree")


def test_bad_launcher_or_termination_mode_is_refused_with_the_real_codes(api: Api) -> None:
    agent = api.agent()
    target = {"InstanceId.1": agent.instance_id}
    run = {"Type": "RunShellScript", "CommandContent": b64("id")}
    long = "x" * 1025
    assert api.error("RunCommand", **run, **target, Launcher=long) == (
        403,
        "InvalidLauncher.LengthLimitExceeded",
    )
    assert api.error("CreateCommand", Name="l", **run, Launcher=long) == (
        403,
        "InvalidLauncher.LengthLimitExceeded",
    )
    assert api.error("RunCommand", **run, **target, TerminationMode="Group") == (
        404,
        "InvalidTerminationMode.NotFound",
    )
    # the real CreateCommand and ModifyCommand take no TerminationMode; Describe* no Launcher
    assert api.error("CreateCommand", Name="l", **run, TerminationMode="Process") == (
        400,
        "InvalidParameter",
    )
    assert api.error("DescribeCommands", Launcher="/bin/sh") == (400, "InvalidParameter")
    command_id = create(api)
    assert api.error("ModifyCommand", CommandId=command_id, Launcher=long) == (
        403,
        "InvalidLauncher.LengthLimitExceeded",
    )
    [command] = api.ok("DescribeCommands", CommandId=command_id)["Commands"]["Command"]
    assert command["Launcher"] == ""
    assert agent.tasks()["run"] == []
    assert api.ok("DescribeCommands", Name="l")["TotalCount"] == 1  # only `create`'s


@pytest.mark.parametrize("region", ["us-west-1", "cn-hangzhou"])
def test_version_12_database_gets_launchers_and_instance_regions(
    tmp_path: Path, region: str
) -> None:
    db = tmp_path / "v12.db"
    migrate_sqlite(db)
    with sqlite3.connect(db) as conn:  # make it what a version-12 server left behind
        for table, column in (
            ("commands", "launcher"),
            ("invocations", "launcher"),
            ("invocations", "termination_mode"),
            ("instances", "region_id"),
        ):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.execute(
            "INSERT INTO activations (activation_id, account, code_hash, description, "
            "instance_name, instance_count, registered_count, deregistered_count, "
            "ip_address_range, ttl_hours, created, created_ms, disabled, region_id) "
            f"VALUES ('act-1', 'a', 'h', '', '', 5, 1, 0, '0.0.0.0/0', 4, '', 0, 0, '{region}')"
        )
        for instance, activation in (("mi-1", "act-1"), ("mi-2", "act-gone")):
            conn.execute(
                "INSERT INTO instances (instance_id, account, activation_id, public_key, "
                "instance_name, hostname, os_type, agent_version, ip, registered, "
                "registered_ms, last_seen_ms, heartbeat_interval, last_invoked_ms, "
                "invocation_count, deregistered, update_requested, update_version) VALUES "
                f"('{instance}', 'a', '{activation}', 'k', '', '', 'linux', '', '', '', 0, 0, "
                "60, 0, 0, 0, 0, '')"
            )
        conn.execute("UPDATE schema_version SET version = 12")
    assert migrate_sqlite(db) == {"before": 12, "after": LATEST}
    with sqlite3.connect(db) as conn:
        regions = conn.execute("SELECT instance_id, region_id FROM instances ORDER BY 1").fetchall()
        columns = {
            table: {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            for table in ("commands", "invocations")
        }
    # an instance whose activation is gone keeps the default region
    assert regions == [("mi-1", region), ("mi-2", "cn-hangzhou")]
    assert "launcher" in columns["commands"]
    assert {"launcher", "termination_mode"} <= columns["invocations"]


def test_agent_registered_now_is_in_its_activations_region(api: Api) -> None:
    agent = api.agent(region="eu-central-1")
    assert run_sql(
        api.server, "SELECT region_id FROM instances WHERE instance_id = ?", agent.instance_id
    ) == [("eu-central-1",)]
