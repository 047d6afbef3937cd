"""The console scripts, run for real: assist-server (migrate, accesskey, serve with TLS) and
assist (configure, ecs, run)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from serverkit import Api

from devkit.server import REPO_ROOT, FakeAgent, launch_server
from devkit.tls import write_loopback_cert
from server.rpc import sign_params
from server.store.migrations import LATEST

REGION = "cn-test"  # the CLI's configured region; the test agents register in it


def run(
    args: list[str], env: dict[str, str] | None = None, **kw: object
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=full_env,
        timeout=120,
        **kw,  # type: ignore[arg-type]
    )


def server_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run(["-m", "server.cli", *args])


def test_migrate_and_accesskey_create(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'a.db'}"
    first = server_cli("migrate", "--db", db, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"before": 0, "after": LATEST}
    again = server_cli("migrate", "--db", db, "--json")
    assert json.loads(again.stdout) == {"before": LATEST, "after": LATEST}
    created = server_cli("accesskey", "create", "--db", db, "--account", "ops", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["AccessKeyId"].startswith("LTAI") and len(key["AccessKeySecret"]) >= 20
    import sqlite3

    with sqlite3.connect(tmp_path / "a.db") as conn:
        rows = conn.execute("SELECT account, secret FROM access_keys").fetchall()
    assert rows == [("ops", key["AccessKeySecret"])]


def test_server_cli_bad_arguments(tmp_path: Path) -> None:
    bad_db = server_cli("migrate", "--db", "mysql://nope")
    assert bad_db.returncode == 2
    assert "unsupported database URL" in bad_db.stderr and "Traceback" not in bad_db.stderr
    bad_listen = server_cli("serve", "--listen", "nowhere", "--db", f"sqlite:///{tmp_path}/x.db")
    assert bad_listen.returncode == 2 and "--listen" in bad_listen.stderr
    half_tls = server_cli("serve", "--tls-cert", "x.pem", "--db", f"sqlite:///{tmp_path}/x.db")
    assert half_tls.returncode == 2 and "--tls-key" in half_tls.stderr
    # workers on a database in memory would each have their own (a file or PostgreSQL works)
    workers = server_cli("serve", "--workers", "2", "--db", "sqlite:///:memory:")
    assert workers.returncode == 2 and ":memory:" in workers.stderr
    no_workers = server_cli("serve", "--workers", "0", "--db", f"sqlite:///{tmp_path}/x.db")
    assert no_workers.returncode == 2 and "--workers" in no_workers.stderr
    assert "Traceback" not in workers.stderr + no_workers.stderr
    assert not (tmp_path / "x.db").exists()


def test_serve_with_tls(tmp_path: Path) -> None:
    cert, key = write_loopback_cert(tmp_path)
    handle = launch_server(
        tmp_path,
        extra_args=["--tls-cert", str(cert), "--tls-key", str(key)],
        scheme="https",
    )
    try:
        key_id, secret = handle.create_access_key()
        params = sign_params({"Action": "DescribeCommands"}, key_id, secret)
        response = requests.post(handle.url + "/", data=params, timeout=30, verify=str(cert))
        assert response.status_code == 200 and response.json()["TotalCount"] == 0
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(handle.url + "/healthz", timeout=30)  # untrusted without the cert
    finally:
        handle.stop()


# --- assist ---------------------------------------------------------------------------------


@pytest.fixture
def configured(api: Api, tmp_path: Path) -> dict[str, str]:
    """XDG_CONFIG_HOME pointing at a fresh dir, configured for `api`'s account."""
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    done = run(
        [
            "-m",
            "server.operator_cli",
            "configure",
            "--access-key-id",
            api.key_id,
            "--access-key-secret",
            api.secret,
            "--region",
            REGION,
            "--endpoint",
            api.server.url,
        ],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    return env


def assist(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run(["-m", "server.operator_cli", *args], env=env)


def test_configure_writes_private_file(configured: dict[str, str], api: Api) -> None:
    path = Path(configured["XDG_CONFIG_HOME"]) / "aliyun-assist" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data == {
        "access_key_id": api.key_id,
        "access_key_secret": api.secret,
        "region": REGION,
        "endpoint": api.server.url,
    }


def test_configure_without_terminal_needs_options(tmp_path: Path) -> None:
    done = run(
        ["-m", "server.operator_cli", "configure"],
        env={"XDG_CONFIG_HOME": str(tmp_path)},
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2 and "--access-key-id" in done.stderr


def test_assist_without_configuration(tmp_path: Path) -> None:
    done = assist({"XDG_CONFIG_HOME": str(tmp_path)}, "ecs", "DescribeCommands")
    assert done.returncode == 2
    assert "assist configure" in done.stderr and "Traceback" not in done.stderr


def test_assist_ecs_readme_spelling(configured: dict[str, str], api: Api) -> None:
    agent = api.agent(region=REGION)
    created = assist(
        configured,
        "ecs",
        "CreateCommand",
        "--CommandContent",
        "ZWNobyAxMjM=",
        "--Type",
        "RunShellScript",
        "--Name",
        "test",
    )
    assert created.returncode == 0, created.stderr
    command_id = json.loads(created.stdout)["CommandId"]
    invoked = assist(
        configured,
        "ecs",
        "InvokeCommand",
        "--InstanceIds",
        agent.instance_id,
        "--CommandId",
        command_id,
        "--Timed",
        "false",
    )
    assert invoked.returncode == 0, invoked.stderr
    invoke_id = json.loads(invoked.stdout)["InvokeId"]
    assert agent.run_shell_tasks() == 1
    described = assist(
        configured,
        "ecs",
        "DescribeInvocationResults",
        "--InstanceId",
        agent.instance_id,
        "--InvokeId",
        invoke_id,
    )
    body = json.loads(described.stdout)
    assert body["Invocation"]["ResultLists"]["ResultItem"][0]["Output"] == "MTIzCg=="


def test_assist_ecs_list_forms(configured: dict[str, str], api: Api) -> None:
    a, b = api.agent(region=REGION), api.agent(region=REGION)
    listed = assist(
        configured, "ecs", "DescribeManagedInstances", "--InstanceIds", a.instance_id, b.instance_id
    )
    assert json.loads(listed.stdout)["TotalCount"] == 2
    as_json = assist(
        configured,
        "ecs",
        "DescribeCloudAssistantStatus",
        "--InstanceIds",
        json.dumps([a.instance_id]),
    )
    statuses = json.loads(as_json.stdout)["InstanceCloudAssistantStatusSet"]
    assert [s["InstanceId"] for s in statuses["InstanceCloudAssistantStatus"]] == [a.instance_id]


def test_assist_ecs_error_exit(configured: dict[str, str]) -> None:
    done = assist(configured, "ecs", "DeleteCommand", "--CommandId", "c-nope")
    assert done.returncode == 1
    assert json.loads(done.stdout)["Code"] == "InvalidCmdId.NotFound"
    assert "InvalidCmdId.NotFound" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    bad = assist(configured, "ecs", "DescribeCommands", "stray")
    assert bad.returncode == 2


def test_a_wrong_secret_names_the_cause_first_and_keeps_the_string_to_sign_for_debug(
    configured: dict[str, str],
) -> None:
    path = Path(configured["XDG_CONFIG_HOME"]) / "aliyun-assist" / "config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps(dict(saved, access_key_secret="not-the-secret")))
    done = assist(configured, "ecs", "DescribeCommands")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("assist: error: SignatureDoesNotMatch: the server computed"), lines
    assert "secret is wrong" in lines[0] and "clock" in lines[0]
    assert "string to sign is:" not in done.stderr
    debug = assist(configured, "--debug", "ecs", "DescribeCommands")
    assert "server string to sign is:POST&%2F&" in debug.stderr, debug.stderr[-3000:]
    assert json.loads(done.stdout)["Message"].startswith("Specified signature is not matched")


def serve_agent(agent: FakeAgent, stop: threading.Event) -> None:
    """A fake agent loop: long-poll, run what arrives, report."""
    while not stop.is_set():
        if agent.poll(timeout=1):
            agent.run_shell_tasks()


def test_assist_run_waits_and_prints_table(configured: dict[str, str], api: Api) -> None:
    agents = [api.agent(region=REGION), api.agent(region=REGION)]
    stop = threading.Event()
    threads = [threading.Thread(target=serve_agent, args=(a, stop)) for a in agents]
    for t in threads:
        t.start()
    try:
        done = assist(
            configured,
            "run",
            "--instance-ids",
            *[a.instance_id for a in agents],
            "--command",
            "echo 123",
            "--wait",
            "--poll-interval",
            "0.2",
        )
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].split() == ["INSTANCE", "STATUS", "EXIT", "OUTPUT"]
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(a.instance_id for a in agents)
    assert all(line.split()[1:] == ["Success", "0", "123"] for line in lines[1:])


def test_assist_run_without_wait(configured: dict[str, str], api: Api) -> None:
    agent = api.agent(region=REGION)
    done = assist(
        configured, "run", "--instance-ids", agent.instance_id, "--command", "exit 3", "--json"
    )
    assert done.returncode == 0, done.stderr
    invoke_id = json.loads(done.stdout)["InvokeId"]
    assert agent.run_shell_tasks() == 1
    item = api.ok("DescribeInvocationResults", InvokeId=invoke_id, RegionId=REGION)["Invocation"][
        "InvocationResults"
    ]["InvocationResult"][0]
    assert (item["InvocationStatus"], item["ExitCode"]) == ("Failed", 3)


def test_assist_run_reports_failure_exit_code(configured: dict[str, str], api: Api) -> None:
    agent = api.agent(region=REGION)
    stop = threading.Event()
    thread = threading.Thread(target=serve_agent, args=(agent, stop))
    thread.start()
    try:
        done = assist(
            configured,
            "run",
            "--instance-ids",
            agent.instance_id,
            "--command",
            "exit 4",
            "--wait",
            "--poll-interval",
            "0.2",
        )
    finally:
        stop.set()
        thread.join()
    assert done.returncode == 1
    assert "Failed" in done.stdout


def test_assist_settings_set_upgrade_and_show(configured: dict[str, str], api: Api) -> None:
    done = assist(configured, "settings", "show")
    assert done.returncode == 0, done.stderr
    assert (
        "Enabled:              false" in done.stdout and "TimeZone:             UTC" in done.stdout
    )
    done = assist(
        configured,
        "settings",
        "set-upgrade",
        "--enable",
        "--window",
        "02:00-03:00",
        "--window",
        "22:00-00:30",
        "--time-zone",
        "Asia/Shanghai",
    )
    assert done.returncode == 0, done.stderr
    assert "AllowedUpgradeWindow: 02:00-03:00, 22:00-00:30" in done.stdout
    # the configured region (cn-test) holds it; another region does not
    stored = api.ok(
        "DescribeCloudAssistantSettings",
        RegionId="cn-test",
        **{"SettingType.1": "AgentUpgradeConfig"},
    )
    assert stored["AgentUpgradeConfig"]["TimeZone"] == "Asia/Shanghai"
    other = assist(configured, "settings", "show", "--region", "us-west-1", "--json")
    assert json.loads(other.stdout)["AgentUpgradeConfig"]["Enabled"] is False
    done = assist(configured, "settings", "set-upgrade", "--disable-upgrade", "--json")
    answer = json.loads(done.stdout)["AgentUpgradeConfig"]
    assert answer["DisableUpgrade"] is True and answer["Enabled"] is True


def test_assist_settings_errors_are_one_line(configured: dict[str, str]) -> None:
    done = assist(configured, "settings", "set-upgrade")
    assert done.returncode == 2 and "nothing to change" in done.stderr
    done = assist(configured, "settings", "set-upgrade", "--window", "02:00-02:30")
    assert done.returncode != 0 and "InvalidParameter" in done.stderr
    assert "60 minutes" in done.stderr and "Traceback" not in done.stderr
