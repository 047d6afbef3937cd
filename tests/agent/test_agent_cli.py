"""assist-agent's command line: register, status, server discovery, clear errors."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.cli import SERVER_TEMPLATE, resolve_server
from common.config import Config
from common.errors import ConfigError, UsageError
from devkit.agent import register_args
from devkit.realagent import AgentProcess, agent_env


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        env=agent_env(),
        timeout=60,
    )


def test_server_discovery_order(tmp_path: Path) -> None:
    config = Config(prefix=tmp_path)
    env = {"ALIYUN_ASSIST_SERVER_HOST": "127.0.0.1:9001", "ALIYUN_ASSIST_REGION": "cn-test"}
    assert resolve_server(["http://127.0.0.1:1"], config, "http://127.0.0.1:4", env) == [
        "http://127.0.0.1:1"
    ]
    config.agent.server = "http://127.0.0.1:2"
    assert resolve_server(None, config, "http://127.0.0.1:4", env) == ["http://127.0.0.1:2"]
    config.agent.server = ""
    assert resolve_server(None, config, "http://127.0.0.1:4", env) == ["https://127.0.0.1:9001"]
    assert resolve_server(None, config, "http://127.0.0.1:4", {}) == ["http://127.0.0.1:4"]
    # the region rule is only the last resort (and only computed, never contacted here)
    assert resolve_server(None, config, "", env | {"ALIYUN_ASSIST_SERVER_HOST": ""}) == [
        SERVER_TEMPLATE.format(region="cn-test")
    ]
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "region-id").write_text("cn-beijing\n")
    assert resolve_server(None, config, "", {}) == ["https://cn-beijing.axt.aliyun.com"]
    (tmp_path / "state" / "region-id").unlink()
    with pytest.raises(ConfigError, match="which server"):
        resolve_server(None, config, "", {})


def test_several_servers_repeated_or_comma_listed(tmp_path: Path) -> None:
    """Replicas: --server repeated, a comma list (in an option, the config or the environment),
    and the registration's list; duplicates once, order kept."""
    config = Config(prefix=tmp_path)
    urls = ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"]
    given = ["http://127.0.0.1:1", "http://127.0.0.1:2/, http://127.0.0.1:3,http://127.0.0.1:1"]
    assert resolve_server(given, config, "", {}) == urls
    config.agent.server = ",".join(urls)
    assert resolve_server(None, config, "", {}) == urls
    config.agent.server = ""
    env = {"ALIYUN_ASSIST_SERVER_HOST": " http://127.0.0.1:3 , http://127.0.0.1:1"}
    assert resolve_server(None, config, urls, env) == [urls[2], urls[0]]
    assert resolve_server(None, config, urls, {}) == urls
    with pytest.raises(UsageError, match="not a server URL"):
        resolve_server(["http://127.0.0.1:1,ftp://x"], config, "", {})


def test_a_tampered_cached_region_is_no_server_host(tmp_path: Path) -> None:
    """state/region-id is read through the one validated reader (common.mirrors): a region that
    is not a region id does not become part of the server URL."""
    config = Config(prefix=tmp_path)
    config.layout.state_dir.mkdir()
    config.layout.region_file.write_text("evil.example.com/x#\n")
    with pytest.raises(ConfigError, match="which server"):
        resolve_server(None, config, "", {})
    assert config.layout.region_file.read_text() == "evil.example.com/x#\n"  # left as it was


def write_quiet_config(prefix: Path) -> None:
    """A config with short long-polls and no scheduled updates."""
    (prefix / "config").mkdir(parents=True)
    (prefix / "config" / "assist.toml").write_text(
        '[agent]\npoll_timeout = 5.0\n[update]\nschedule = ""\n'
    )


def test_register_keeps_a_private_key_and_refuses_twice(tmp_path: Path, fake_server) -> None:  # type: ignore[no-untyped-def]
    prefix = tmp_path / "p"
    args = register_args(fake_server.url, fake_server.activation(), prefix)
    first = cli(*args, "--json")
    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout)
    assert answer["instance_id"].startswith("mi-")
    key = prefix / "state" / "agent.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    identity = json.loads((prefix / "state" / "identity.json").read_text())
    assert identity == {
        "instance_id": answer["instance_id"],
        "server": fake_server.url,
        "servers": [fake_server.url],
    }
    again = cli(*args)
    assert again.returncode == 2 and "already registered" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert json.loads((prefix / "state" / "identity.json").read_text()) == identity  # unchanged


def test_register_with_several_servers_uses_the_first_that_answers(
    tmp_path: Path, fake_server
) -> None:  # type: ignore[no-untyped-def]
    """`--server DEAD,LIVE`: the dead replica is skipped; both are kept for the daemon."""
    from devkit.server import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    prefix = tmp_path / "p"
    args = register_args(f"{dead},{fake_server.url}", fake_server.activation(), prefix)
    done = cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["server"], answer["servers"]) == (fake_server.url, [dead, fake_server.url])
    identity = json.loads((prefix / "state" / "identity.json").read_text())
    assert identity["servers"] == [dead, fake_server.url]
    assert "trying the next server" in done.stderr
    # every server dead: one clear line, nothing saved
    other = tmp_path / "q"
    failed = cli(*register_args(f"{dead},{dead}/x", fake_server.activation(), other))
    assert failed.returncode != 0 and "cannot reach" in failed.stderr
    assert not (other / "state" / "identity.json").exists()


def test_register_with_a_wrong_code_is_one_clear_line(tmp_path: Path, fake_server) -> None:  # type: ignore[no-untyped-def]
    act_id, _ = fake_server.activation()
    out = cli(
        "register",
        "--server",
        fake_server.url,
        "--activation-id",
        act_id,
        "--activation-code",
        "wrong",
        "--prefix",
        str(tmp_path),
    )
    assert out.returncode == 1
    assert "InvalidActivation" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "state" / "agent.key").exists()


def test_register_against_a_dead_server_is_one_clear_line(tmp_path: Path) -> None:
    out = cli(
        "register",
        "--server",
        "http://127.0.0.1:9",
        "--activation-id",
        "a",
        "--activation-code",
        "b",
        "--prefix",
        str(tmp_path),
    )
    assert out.returncode == 1 and "cannot reach" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_run_unregistered_waits_healthy_and_picks_up_a_later_register(
    tmp_path: Path, fake_server
) -> None:  # type: ignore[no-untyped-def]
    prefix = tmp_path / "p"
    write_quiet_config(prefix)
    agent = AgentProcess(prefix)
    try:
        health = prefix / "state" / "health.json"
        deadline = time.monotonic() + 30
        while not health.exists() and time.monotonic() < deadline:
            assert agent.proc.poll() is None, agent.log()
            time.sleep(0.1)
        up = cli("status", "--prefix", str(prefix), "--json")
        report = json.loads(up.stdout)
        assert up.returncode == 0, up.stderr
        assert report["running"] and report["pid"] == agent.proc.pid
        assert report["waiting_for_registration"] and not report["registered"]
        assert report["state"] == "waiting for registration"
        text = cli("status", "--prefix", str(prefix))
        assert text.returncode == 0 and "waiting for registration" in text.stdout
        assert "waiting for `assist-agent register`" in agent.log()
        before = cpu_ticks(agent.proc.pid)
        time.sleep(3)
        assert cpu_ticks(agent.proc.pid) - before < 30  # idle: well under 0.3 s of CPU in 3 s
        registered = cli(*register_args(fake_server.url, fake_server.activation(), prefix))
        assert registered.returncode == 0, registered.stderr
        agent.wait_connected(timeout=30)  # the same process, not restarted
        instance = registered.stdout.strip()
        invoke = fake_server.state.add_task(instance, script="echo after-register\n")
        assert fake_server.state.wait(lambda s: s.results_for(invoke), timeout=30)
        [result] = fake_server.state.results_for(invoke)
        assert base64.b64decode(result["output"]) == b"after-register\n"
        report = json.loads(cli("status", "--prefix", str(prefix), "--json").stdout)
        assert report["registered"] and not report["waiting_for_registration"]
        assert report["state"] == "connected" and report["pid"] == agent.proc.pid
    finally:
        assert agent.stop() == 0


def test_an_unregistered_agent_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path / "p")
    health = tmp_path / "p" / "state" / "health.json"
    deadline = time.monotonic() + 30
    while not health.exists() and time.monotonic() < deadline:
        assert agent.proc.poll() is None, agent.log()
        time.sleep(0.1)
    assert agent.stop() == 0
    assert "Traceback" not in agent.log()


def test_status_reports_running_agent_and_refuses_a_second_one(tmp_path: Path, fake_server) -> None:  # type: ignore[no-untyped-def]
    prefix = tmp_path / "p"
    write_quiet_config(prefix)
    assert cli(*register_args(fake_server.url, fake_server.activation(), prefix)).returncode == 0
    down = cli("status", "--prefix", str(prefix), "--json")
    assert down.returncode == 3 and json.loads(down.stdout)["running"] is False
    agent = AgentProcess(prefix)
    try:
        agent.wait_connected()
        up = cli("status", "--prefix", str(prefix), "--json")
        report = json.loads(up.stdout)
        assert up.returncode == 0 and report["running"] and report["connected"]
        assert report["pid"] == agent.proc.pid and report["registered"]
        assert report["pending_reports"] == 0
        second = cli("run", "--prefix", str(prefix))
        assert second.returncode == 4 and "another agent" in second.stderr
    finally:
        assert agent.stop() == 0
    assert cli("status", "--prefix", str(prefix)).returncode == 3
    assert os.path.exists(prefix / "state" / "agent.db")


def test_server_url_must_be_http_or_https() -> None:
    import pytest

    from agent.client import normalize_server
    from common.errors import UsageError

    assert normalize_server("127.0.0.1:8080") == "https://127.0.0.1:8080"
    assert normalize_server("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    with pytest.raises(UsageError, match="not a server URL"):
        normalize_server("ftp://nope")
