"""One step, as an image pipeline or cloud-init runs it: `assist-install agent --server URL
--activation-id ID` (the code from the environment or stdin) installs a real release from a
loopback mirror, registers with a real assist-server and starts the agent; an invocation then
runs on it. The activation code never shows in any process's command line, nor in the agent's
environment, nor in any log."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.service import ProcessManager
from devkit.fixtures import server_fixture
from devkit.httpserver import StaticServer
from devkit.polling import Sampler, process_cmdlines
from devkit.release import build, init_repo, keygen, publish
from devkit.server import ServerHandle

pytestmark = [pytest.mark.xdist_group("install-onestep"), pytest.mark.slow]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("onestep-release")
    keys = keygen(base / "keys")
    repo = init_repo(base / "repo", keys)
    publish(repo, keys, build(keys, "1.0.0", base / "dist"))
    return {"keys": keys, "repo": repo}


server = server_fixture("onestep-server")


@pytest.fixture
def mirror(release: dict[str, Path]) -> Iterator[StaticServer]:
    with StaticServer(release["repo"]) as static:
        yield static


class Operator:
    """Signed operator API calls for one fresh account."""

    def __init__(self, server: ServerHandle) -> None:
        self.server = server
        self.key_id, self.secret = server.create_access_key(f"onestep-{os.getpid()}-{time.time()}")

    def call(self, action: str, **params: Any) -> dict[str, Any]:
        response = self.server.call(action, self.key_id, self.secret, **params)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def managed_instances(self) -> list[dict[str, Any]]:
        body = self.call("DescribeManagedInstances")
        instances = body["Instances"]
        return list(instances["Instance"] if isinstance(instances, dict) else instances)

    def run(self, script: str, instance_id: str, timeout: float = 60) -> dict[str, Any]:
        command = self.call(
            "CreateCommand",
            Name="onestep",
            Type="RunShellScript",
            CommandContent=base64.b64encode(script.encode()).decode(),
        )["CommandId"]
        invoke = self.call(
            "InvokeCommand", CommandId=command, InstanceIds=json.dumps([instance_id])
        )["InvokeId"]
        deadline = time.monotonic() + timeout
        while True:
            body = self.call("DescribeInvocationResults", InvokeId=invoke, InstanceId=instance_id)
            items = body["Invocation"]["InvocationResults"]["InvocationResult"]
            if items and items[0]["InvocationStatus"] in ("Success", "Failed"):
                return dict(items[0])
            assert time.monotonic() < deadline, items
            time.sleep(0.2)


class CmdlineWatch(Sampler):
    """Scan every process's /proc/PID/cmdline (what `ps` shows) for a secret while running."""

    interval = 0.01

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret.encode()
        self.seen: list[str] = []
        self.scans = 0

    def sample(self) -> None:
        for _, cmdline in process_cmdlines():
            if self.secret in cmdline:
                self.seen.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
        self.scans += 1


def install(
    prefix: Path, release: dict[str, Path], mirror: StaticServer, *extra: str, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """`assist-install agent` with the process service, as a subprocess."""
    argv = [sys.executable, "-m", "installer.cli", "agent", "--prefix", str(prefix)]
    argv += ["--mirror", mirror.url, "--trust-root", str(release["keys"] / "root.json")]
    argv += ["--service", "process", "--health-timeout", "60", "--json", *extra]
    env = {**os.environ, "ALIYUN_ASSIST_PYTHON": sys.executable, "ASSIST_PYTHON": sys.executable}
    env.update(kw.pop("env", {}))
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=300, check=False, **kw
    )


def logs_under(prefix: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in prefix.rglob("*.log") if p.is_file())


@pytest.mark.parametrize("source", ["env", "stdin"])
def test_one_step_install_registers_and_runs_an_invocation_without_showing_the_code(
    source: str,
    release: dict[str, Path],
    server: ServerHandle,
    mirror: StaticServer,
    tmp_path: Path,
) -> None:
    op = Operator(server)
    activation_id, code = server.create_activation(op.key_id, op.secret, count=2)
    prefix = tmp_path / "prefix"
    extra: dict[str, Any] = (
        {"env": {"ALIYUN_ASSIST_ACTIVATION_CODE": code}}
        if source == "env"
        else {"input": code + "\n"}
    )
    args = ["--server", server.url, "--activation-id", activation_id, "--instance-name", "img-1"]
    if source == "stdin":
        args += ["--activation-code", "-"]
    try:
        with CmdlineWatch(code) as watch:
            proc = install(prefix, release, mirror, *args, **extra)
            assert proc.returncode == 0, proc.stderr
            result = json.loads(proc.stdout)
            instance_id = result["instance_id"]
            assert result["healthy"] is True and result["registered"] == "now"
            # registered: the operator sees it, and an invocation runs on the started agent
            [instance] = [i for i in op.managed_instances() if i["InstanceId"] == instance_id]
            assert instance["InstanceName"] == "img-1"
            item = op.run("echo 123", instance_id)
            assert item["InvocationStatus"] == "Success", item
            assert base64.b64decode(item["Output"]) == b"123\n"
            subprocess.run(["sh", "-c", "sleep 0.5", "control", code], check=True)  # must be seen
        assert watch.scans > 10
        assert set(watch.seen) == {f"sh -c sleep 0.5 control {code} "}, watch.seen
        # state left: the identity under state/, the agent running without the code in its env
        identity = json.loads((prefix / "state" / "identity.json").read_text())
        assert identity["instance_id"] == instance_id
        pid = ProcessManager(prefix).main_pid()
        assert pid is not None
        assert code.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
        for text in (proc.stdout, proc.stderr, logs_under(prefix), server.log()):
            assert code not in text
    finally:
        ProcessManager(prefix, stop_timeout=5).stop()


def test_one_step_with_a_wrong_code_installs_but_says_it_did_not_register(
    release: dict[str, Path], server: ServerHandle, mirror: StaticServer, tmp_path: Path
) -> None:
    op = Operator(server)
    activation_id, _ = server.create_activation(op.key_id, op.secret, count=1)
    prefix = tmp_path / "prefix"
    proc = install(
        prefix,
        release,
        mirror,
        "--server",
        server.url,
        "--activation-id",
        activation_id,
        env={"ALIYUN_ASSIST_ACTIVATION_CODE": "wrong-code-123"},
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "installed but did not register" in lines[0] and "wrong-code-123" not in lines[0]
    assert (prefix / "current" / "bin" / "assist-agent").is_file()
    assert not (prefix / "state" / "identity.json").exists()
    assert ProcessManager(prefix).main_pid() is None  # not started half-configured
    assert op.managed_instances() == []


def test_server_without_activation_id_is_refused_before_any_download(
    release: dict[str, Path], mirror: StaticServer, tmp_path: Path
) -> None:
    prefix = tmp_path / "prefix"
    proc = install(prefix, release, mirror, "--server", "http://127.0.0.1:9")
    assert proc.returncode == 2 and "--server and --activation-id go together" in proc.stderr
    assert not (prefix / "versions").exists()


def test_missing_code_is_refused_before_any_download(
    release: dict[str, Path], mirror: StaticServer, tmp_path: Path
) -> None:
    prefix = tmp_path / "prefix"
    env = {k: v for k, v in os.environ.items() if k != "ALIYUN_ASSIST_ACTIVATION_CODE"}
    proc = subprocess.run(
        [sys.executable, "-m", "installer.cli", "agent", "--prefix", str(prefix)]
        + ["--server", "http://127.0.0.1:9", "--activation-id", "act-1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "no activation code" in proc.stderr
    assert "ALIYUN_ASSIST_ACTIVATION_CODE" in proc.stderr
    assert not (prefix / "versions").exists()


def test_register_reads_the_code_from_stdin_or_the_environment() -> None:
    import io

    from common.cli import read_activation_code
    from common.errors import UsageError

    env = {"ALIYUN_ASSIST_ACTIVATION_CODE": "from-env"}
    assert read_activation_code(None, env) == "from-env"
    assert read_activation_code("-", env, io.StringIO("from-stdin\n")) == "from-stdin"
    assert read_activation_code("given", env) == "given"
    with pytest.raises(UsageError, match="no activation code"):
        read_activation_code("-", env, io.StringIO(""))
    with pytest.raises(UsageError, match="ALIYUN_ASSIST_ACTIVATION_CODE"):
        read_activation_code(None, {})
