"""The control plane's AgentUpgradeConfig drives a real agent's scheduled self-update, end to end:
a real release (1.0.0 and a newer 1.1.0) on a loopback mirror, `assist-install agent --server`
registering with a real assist-server, the installed agent running under the process manager
with an [update] schedule of every 2 seconds, and settings changed through the operator API.

- a window that closed a minute ago: no update; a window open now: the agent updates to 1.1.0;
- DisableUpgrade: no scheduled update and a KickAgentUpdate is not followed; turned off again
  (custom settings off), the agent's own schedule updates it;
- a proxy rewriting the signed update_check answer: refused, the kept setting stays.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from agent_mitm import MitmProxy

from common.service import ProcessManager
from devkit.httpserver import StaticServer
from devkit.polling import stop_processes_mentioning
from devkit.release import build, init_repo, keygen, publish
from devkit.server import ServerHandle, launch_server

pytestmark = [pytest.mark.xdist_group("update-settings-e2e"), pytest.mark.slow]

ZONE = "Asia/Shanghai"  # the windows are read in this zone, not in UTC
QUIET = 10.0  # seconds an agent is watched not updating (5 scheduled fires)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("settings-release")
    keys = keygen(base / "keys")
    repo = init_repo(base / "repo", keys)
    publish(repo, keys, build(keys, "1.0.0", base / "dist") + build(keys, "1.1.0", base / "dist"))
    return {"keys": keys, "repo": repo}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = launch_server(tmp_path_factory.mktemp("settings-server"))
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def mirror(release: dict[str, Path]) -> Iterator[StaticServer]:
    with StaticServer(release["repo"]) as static:
        yield static


class Fleet:
    """One account, one installed agent (1.0.0) in `prefix`."""

    def __init__(self, server: ServerHandle, prefix: Path) -> None:
        self.server = server
        self.prefix = prefix
        self.key_id, self.secret = server.create_access_key(f"settings-{time.time_ns()}")
        self.instance_id = ""

    def call(self, action: str, **params: Any) -> dict[str, Any]:
        response = self.server.call(action, self.key_id, self.secret, **params)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def upgrade_config(self, **config: Any) -> None:
        self.call(
            "ModifyCloudAssistantSettings",
            SettingType="AgentUpgradeConfig",
            AgentUpgradeConfig=json.dumps(config),
        )

    def install(self, release: dict[str, Path], mirror: StaticServer, server_url: str) -> None:
        """Install 1.0.0 with a 2-second update schedule, registered with the server."""
        activation_id, code = self.server.create_activation(self.key_id, self.secret, count=1)
        (self.prefix / "config").mkdir(parents=True)
        (self.prefix / "config" / "assist.toml").write_text(
            f'[mirror]\nmirrors = ["{mirror.url}"]\nmetadata_url = ""\n'
            '[update]\nservice = "process"\nschedule = "*/2 * * * * *"\nsplay = 0.0\n'
            "health_timeout = 60.0\nsettle = 1.0\n"
            "[agent]\npoll_timeout = 5.0\nheartbeat = 5.0\n"
        )
        argv = [sys.executable, "-m", "installer.cli", "agent", "--prefix", str(self.prefix)]
        argv += ["--mirror", mirror.url, "--trust-root", str(release["keys"] / "root.json")]
        argv += ["--version", "1.0.0", "--service", "process", "--health-timeout", "60"]
        argv += ["--server", server_url, "--activation-id", activation_id, "--json"]
        env = {**os.environ, "ALIYUN_ASSIST_PYTHON": sys.executable}
        env["ALIYUN_ASSIST_ACTIVATION_CODE"] = code
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["version"] == "1.0.0" and result["healthy"] is True
        self.instance_id = result["instance_id"]

    def current(self) -> str:
        return os.readlink(self.prefix / "current").rsplit("/", 1)[-1]

    def agent_log(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted((self.prefix / "log").glob("*.log"))
        )

    def kept_policy(self) -> dict[str, Any] | None:
        path = self.prefix / "state" / "upgrade-policy.json"
        return json.loads(path.read_text()) if path.exists() else None

    def updater_started(self) -> bool:
        return (self.prefix / "log" / "update.log").exists()


@pytest.fixture
def fleet(server: ServerHandle, tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(server, tmp_path / "prefix")
    try:
        yield fleet
    finally:
        ProcessManager(fleet.prefix, stop_timeout=5).stop()
        # an updater that was applying (the schedule runs every 2 s) may have started the agent
        # again after the stop: such leftovers kept running after the test run ended
        stop_processes_mentioning(str(fleet.prefix))


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, fleet: Fleet) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}:\n{fleet.agent_log()[-4000:]}"
        time.sleep(0.25)


def window(start_minutes: int, end_minutes: int) -> str:
    """HH:MM-HH:MM from now (whole minutes, in ZONE)."""
    now = datetime.now(ZoneInfo(ZONE)).replace(second=0, microsecond=0)
    start, end = now + timedelta(minutes=start_minutes), now + timedelta(minutes=end_minutes)
    return f"{start:%H:%M}-{end:%H:%M}"


def updated(fleet: Fleet) -> bool:
    health = fleet.prefix / "state" / "health.json"
    try:
        record = json.loads(health.read_text())
    except (OSError, ValueError):
        return False
    return fleet.current() == "1.1.0" and record.get("version") == "1.1.0"


def test_no_update_outside_the_window_then_an_update_inside_it(
    release: dict[str, Path], server: ServerHandle, mirror: StaticServer, fleet: Fleet
) -> None:
    closed = window(-61, -1)  # closed a minute ago
    fleet.upgrade_config(Enabled=True, AllowedUpgradeWindow=[closed], TimeZone=ZONE)
    fleet.install(release, mirror, server.url)
    wait_for(lambda: fleet.kept_policy() is not None, 20, "the setting did not arrive", fleet)
    assert fleet.kept_policy() == {
        "enabled": True,
        "allowed_upgrade_windows": [closed],
        "time_zone": ZONE,
        "disable_upgrade": False,
    }
    time.sleep(QUIET)
    assert fleet.current() == "1.0.0" and not fleet.updater_started(), fleet.agent_log()
    assert "moved into the server's upgrade window" in fleet.agent_log()

    fleet.upgrade_config(AllowedUpgradeWindow=[window(-1, 59)])  # open now
    wait_for(lambda: updated(fleet), 120, "no update inside the window", fleet)
    assert (fleet.prefix / "previous").resolve().name == "1.0.0"
    assert "starting the updater (schedule)" in fleet.agent_log()


def test_disable_upgrade_stops_every_update_and_enabled_false_falls_back_to_the_schedule(
    release: dict[str, Path], server: ServerHandle, mirror: StaticServer, fleet: Fleet
) -> None:
    fleet.upgrade_config(DisableUpgrade=True)
    fleet.install(release, mirror, server.url)
    wait_for(lambda: fleet.kept_policy() is not None, 20, "the setting did not arrive", fleet)
    fleet.call("KickAgentUpdate", **{"InstanceId.1": fleet.instance_id})
    wait_for(
        lambda: "DisableUpgrade is set" in fleet.agent_log(), 20, "the kick was not seen", fleet
    )
    time.sleep(QUIET)
    assert fleet.current() == "1.0.0" and not fleet.updater_started(), fleet.agent_log()
    assert "scheduled updates are off" in fleet.agent_log()

    fleet.upgrade_config(DisableUpgrade=False)  # Enabled stays false: the agent's own schedule
    wait_for(lambda: updated(fleet), 120, "no update on the agent's own schedule", fleet)


def test_a_rewritten_setting_is_refused_and_the_kept_one_stays(
    release: dict[str, Path], server: ServerHandle, mirror: StaticServer, fleet: Fleet
) -> None:
    def lift_the_ban(path: str, body: bytes) -> bytes:
        if not path.endswith("/update/update_check"):
            return body
        answer = json.loads(body)
        answer["upgrade_config"] = {**answer["upgrade_config"], "disable_upgrade": False}
        return json.dumps(answer).encode()

    fleet.upgrade_config(DisableUpgrade=True, TimeZone="UTC")
    with MitmProxy(server.url) as proxy:
        fleet.install(release, mirror, proxy.url)
        wait_for(lambda: fleet.kept_policy() is not None, 20, "the setting did not arrive", fleet)
        kept = fleet.kept_policy()
        proxy.rewrite = lift_the_ban
        fleet.upgrade_config(TimeZone=ZONE)  # the agent is told, and its check is rewritten
        wait_for(
            lambda: any(p.endswith("update_check") for p, *_ in proxy.answers[-3:]),
            20,
            "no update check after the change",
            fleet,
        )
        time.sleep(QUIET)
        assert fleet.kept_policy() == kept and kept is not None and kept["disable_upgrade"]
        assert fleet.current() == "1.0.0" and not fleet.updater_started(), fleet.agent_log()
        assert "ResponseSignatureInvalid" in fleet.agent_log() or "signature" in fleet.agent_log()
