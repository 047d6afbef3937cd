"""Install before registration, as an image build or cloud-init does it, with real parts only:
a release built and published by assist-pkgbuild, served on loopback, `assist-install agent
--service process` with no registration, then the installed `assist-agent register` against a
real assist-server, picked up live by the running agent, and an invocation run on it.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.platform import pid_alive
from common.service import ProcessManager
from devkit.agent import register_args
from devkit.httpserver import StaticServer
from devkit.release import build, init_repo, keygen, publish
from devkit.server import launch_server

pytestmark = [pytest.mark.xdist_group("install-unregistered"), pytest.mark.slow]

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("unregistered-release")
    keys = keygen(base / "keys")
    repo = init_repo(base / "www" / "cn-test", keys)
    publish(repo, keys, build(keys, "1.0.0", base / "dist"))
    return {"keys": keys, "www": base / "www"}


@pytest.fixture
def public_prefix() -> Iterator[Path]:
    """A prefix in a 0755 directory, so only state/'s own modes keep other users out."""
    base = Path(tempfile.mkdtemp(prefix="assist-install-", dir="/tmp"))
    os.chmod(base, 0o755)
    prefix = base / "prefix"
    try:
        yield prefix
    finally:
        ProcessManager(prefix, stop_timeout=5).stop()
        subprocess.run(["rm", "-rf", str(base)], check=False)


def installed(prefix: Path, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run an installed launcher (<prefix>/current/bin/…) as an operator would."""
    return subprocess.run(
        [str(prefix / "current" / "bin" / command), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def health(prefix: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((prefix / "state" / "health.json").read_text()))
    except (OSError, ValueError):
        return {}


def test_install_without_registration_then_register_live_and_run_a_command(
    release: dict[str, Any],
    public_prefix: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALIYUN_ASSIST_PYTHON", sys.executable)  # --no-vendor payload
    monkeypatch.setenv("ALIYUN_ASSIST_REGION", "cn-test")
    prefix = public_prefix
    with StaticServer(release["www"]) as mirror:
        (prefix / "config").mkdir(parents=True)
        (prefix / "config" / "assist.toml").write_text(
            "[mirror]\n"
            f'intranet_template = "{mirror.url}{{region}}/"\n'
            'internet_origin = "http://127.0.0.1:9/"\n'
            'metadata_url = ""\n'
            "probe_timeout = 2.0\n"
            "[agent]\npoll_timeout = 5.0\n"
            '[update]\nservice = "process"\nschedule = ""\n'
        )
        proc = subprocess.run(
            [sys.executable, "-m", "installer.cli", "agent", "--prefix", str(prefix)]
            + ["--version", "1.0.0", "--service", "process", "--health-timeout", "30"]
            + ["--trust-root", str(release["keys"] / "root.json"), "--json"],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    # 1. installed and running although nobody registered it
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["healthy"] is True
    pid = ProcessManager(prefix).main_pid()
    assert pid is not None and pid_alive(pid)
    assert not (prefix / "state" / "identity.json").exists()
    # the installer laid out a private state/
    assert stat.S_IMODE((prefix / "state").stat().st_mode) == 0o700
    denied = subprocess.run([*NOBODY, "ls", str(prefix / "state")], capture_output=True, text=True)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr

    # 2. status says it waits for registration, and exits 0
    status = installed(prefix, "assist-agent", "status", "--prefix", str(prefix), "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["waiting_for_registration"] and report["state"] == "waiting for registration"
    assert report["pid"] == pid

    # 3. a later register against a real server is picked up by the same process
    server = launch_server(tmp_path / "server")
    try:
        key_id, secret = server.create_access_key("install-first")
        act_id, code = server.create_activation(key_id, secret)
        registered = installed(
            prefix,
            "assist-agent",
            *register_args(server.url, (act_id, code), prefix),
        )
        assert registered.returncode == 0, registered.stderr
        instance = registered.stdout.strip()
        deadline = time.monotonic() + 30
        while not health(prefix).get("connected") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert health(prefix).get("connected") and health(prefix)["pid"] == pid  # no restart
        assert ProcessManager(prefix).main_pid() == pid

        # 4. an invocation runs on it (operator API, signed like the SDK)
        content = base64.b64encode(b"echo 123\n").decode()
        created = server.call(
            "CreateCommand", key_id, secret, CommandContent=content, Type="RunShellScript", Name="t"
        ).json()
        invoked = server.call(
            "InvokeCommand",
            key_id,
            secret,
            CommandId=created["CommandId"],
            **{"InstanceId.1": instance},
        ).json()
        item: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            answer = server.call(
                "DescribeInvocationResults",
                key_id,
                secret,
                InstanceId=instance,
                InvokeId=invoked["InvokeId"],
            ).json()
            items = answer["Invocation"]["InvocationResults"]["InvocationResult"]
            item = items[0] if items else {}
            if item.get("InvocationStatus") == "Success":
                break
            time.sleep(0.3)
        assert item.get("InvocationStatus") == "Success", (item, server.log()[-2000:])
        assert item["Output"] == "MTIzCg=="
    finally:
        server.stop()
