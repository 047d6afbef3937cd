"""End to end over loopback with real releases (assist-pkgbuild keygen/build/init/publish), the
real console scripts as subprocesses, TUF verification and real agent processes:

install agent 1.0.0 from a repository whose internet mirror is unreachable and whose regional
mirror is up (it picks the regional one) → `assist-update apply` → 1.1.0, healthy → a broken
1.2.0 (built with --source from a copy whose agent exits at start) → exit 3, back on 1.1.0; a
second failure blocklists it and a third apply is refused (exit 4) → `status --json` tells it all.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.service import ProcessManager
from devkit.httpserver import StaticServer
from devkit.release import broken_source, build, init_repo, keygen, publish

pytestmark = [pytest.mark.xdist_group("update-e2e"), pytest.mark.slow]


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def run_cli(module: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run one of our console scripts (python -m MODULE) the way an operator would."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Keys, artifacts 1.0.0, 1.1.0 and a broken 1.2.0 (tar.gz), a repo with 1.0.0 + 1.1.0."""
    base = tmp_path_factory.mktemp("release")
    keys = keygen(base / "keys")
    good = build(keys, "1.0.0", base / "dist") + build(keys, "1.1.0", base / "dist")
    broken = build(keys, "1.2.0", base / "broken", source=broken_source(base / "broken-src"))
    repo = init_repo(base / "www" / "cn-test", keys)
    publish(repo, keys, good)
    return {"keys": keys, "repo": repo, "www": base / "www", "broken": broken, "base": base}


@pytest.fixture
def world(
    release: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """A regional mirror on loopback, an unreachable internet origin, and a prefix configured so."""
    from agent.identity import Identity, generate_key, save_identity

    monkeypatch.setenv("ALIYUN_ASSIST_PYTHON", sys.executable)  # --no-vendor payloads
    monkeypatch.setenv("ALIYUN_ASSIST_REGION", "cn-test")
    prefix = tmp_path / "prefix"
    dead = f"http://127.0.0.1:{closed_port()}/"
    with StaticServer(release["www"]) as mirror:
        (prefix / "config").mkdir(parents=True)
        (prefix / "config" / "assist.toml").write_text(
            "[mirror]\n"
            f'intranet_template = "{mirror.url}{{region}}/"\n'
            f'internet_origin = "{dead}"\n'
            'metadata_url = ""\n'
            "probe_timeout = 2.0\n"
            "[update]\n"
            'service = "process"\n'
            "health_timeout = 30.0\n"
            "settle = 1.0\n"
        )
        save_identity(prefix / "state", Identity("mi-e2e", generate_key(), dead))
        try:
            yield {
                "prefix": prefix,
                "mirror": mirror,
                "regional": f"{mirror.url}cn-test/",
                "internet": dead,
            }
        finally:
            ProcessManager(prefix, stop_timeout=5).stop()


def status(prefix: Path) -> dict[str, Any]:
    proc = run_cli("updater.cli", "status", "--prefix", str(prefix), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def install_1_0_0(prefix: Path, keys: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`assist-install agent --version 1.0.0` with the process service manager."""
    return run_cli(
        "installer.cli", "agent", "--prefix", str(prefix), "--version", "1.0.0",
        "--service", "process", "--trust-root", str(keys / "root.json"), *extra,
    )  # fmt: skip


def test_install_update_broken_update_rollback_blocklist(
    release: dict[str, Any], world: dict[str, Any]
) -> None:
    prefix = world["prefix"]
    keys = release["keys"]
    # 1. first install of 1.0.0 from the regional mirror (internet unreachable)
    proc = install_1_0_0(prefix, keys, "--health-timeout", "30", "--json")
    assert proc.returncode == 0, proc.stderr
    installed = json.loads(proc.stdout)
    assert installed["version"] == "1.0.0" and installed["healthy"] is True
    assert installed["mirror"] == world["regional"]
    assert world["internet"] not in installed["mirrors"]
    st = status(prefix)
    assert st["current"] == "1.0.0" and st["health"]["version"] == "1.0.0"
    assert st["health"]["running"]

    # 2. apply: 1.1.0, healthy
    proc = run_cli("updater.cli", "apply", "--prefix", str(prefix))
    assert proc.returncode == 0, proc.stderr
    st = status(prefix)
    assert (st["current"], st["previous"]) == ("1.1.0", "1.0.0")
    assert st["journal"]["phase"] == "committed"
    assert st["health"]["version"] == "1.1.0" and st["health"]["running"]

    # 3. broken 1.2.0 published: exit 3, back on 1.1.0 (running, healthy), failure counted
    publish(release["repo"], keys, release["broken"])
    proc = run_cli("updater.cli", "apply", "--prefix", str(prefix))
    assert proc.returncode == 3, proc.stderr
    assert "rolled back" in proc.stderr
    st = status(prefix)
    assert (st["current"], st["previous"]) == ("1.1.0", "1.0.0")
    assert st["journal"]["phase"] == "rolled_back" and st["journal"]["to_version"] == "1.2.0"
    assert st["health"]["version"] == "1.1.0" and st["health"]["running"]
    assert st["blocklist"]["failures"] == {"1.2.0": 1} and st["blocklist"]["blocked"] == []
    assert "1.2.0" in st["blocklist"]["reasons"]

    # 4. a second failure blocklists 1.2.0; then apply refuses (exit 4) and check says up to date
    assert run_cli("updater.cli", "apply", "--prefix", str(prefix)).returncode == 3
    proc = run_cli("updater.cli", "apply", "--prefix", str(prefix))
    assert proc.returncode == 4 and "blocklisted" in proc.stderr
    proc = run_cli("updater.cli", "check", "--prefix", str(prefix), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["update_available"] is False
    st = status(prefix)
    assert st["current"] == "1.1.0" and st["blocklist"]["blocked"] == ["1.2.0"]
    assert st["last_update"]["result"] == "refused"
    assert st["health"]["running"] and st["health"]["version"] == "1.1.0"
    assert sorted(st["installed"]) == ["1.0.0", "1.1.0", "1.2.0"]


def test_killed_updater_is_recovered_by_the_agent_at_its_next_start(
    release: dict[str, Any], world: dict[str, Any]
) -> None:
    """kill -9 of the real updater right after `health_check` (new agent 1.1.0 running), then a
    "reboot": the agent started by the service manager runs recovery itself (no updater runs),
    which rolls back to 1.0.0 and re-executes as 1.0.0, which reports health. The agent cannot
    check its own health, so the kill counts as no failure of 1.1.0 (issue 10.9)."""
    import os
    import time

    prefix = world["prefix"]
    proc = install_1_0_0(prefix, release["keys"])
    assert proc.returncode == 0, proc.stderr
    env = dict(os.environ, ASSIST_UPDATE_CRASH_AT="health_check")
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "updater.cli",
            "apply",
            "--prefix",
            str(prefix),
            "--version",
            "1.1.0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr
    # The 1.1.0 agent was started just before the kill; if its own start-up recovery ran after
    # the updater died (lock free), it is rolling back or has rolled back — either way the
    # reboot below must end on 1.0.0.
    assert status(prefix)["journal"]["phase"] in ("health_check", "rolling_back", "rolled_back")

    manager = ProcessManager(prefix, stop_timeout=5)
    manager.stop()  # the machine goes down
    manager.start()  # and comes back: the agent of `current` (1.1.0) starts first
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        st = status(prefix)
        if st["health"] and st["health"]["version"] == "1.0.0" and st["health"]["running"]:
            break
        time.sleep(0.2)
    assert st["current"] == "1.0.0"
    assert st["health"]["version"] == "1.0.0" and st["health"]["running"]
    assert st["journal"]["phase"] == "rolled_back"
    assert st["blocklist"]["failures"] == {}  # a kill is no failure of the version
