"""SendFile end to end: the real agent (subprocess, as root) and the real assist-server,
operated through the official SDK. The file lands with its mode and owner; a TargetDir that is
a symlink out is refused and nothing is written outside; Overwrite; a tampered or unsigned
task list writes nothing and the operator sees why (issue 14.4, docs/SECURITY.md)."""

from __future__ import annotations

import base64
import json
import os
import pwd
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_mitm import MitmProxy

from common import protocol
from devkit.realagent import AgentProcess, Sdk, agent_env, register_agent
from devkit.server import ServerHandle, launch_server

pytestmark = [
    pytest.mark.xdist_group("agent-e2e"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the agent gives files to nobody: needs root"),
]
DONE = ("Success", "Failed", "PartialFailed")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = launch_server(tmp_path_factory.mktemp("sendfile-server"))
    try:
        yield handle
    finally:
        handle.stop()


class Env:
    def __init__(self, server: ServerHandle, tmp_path: Path) -> None:
        self.server = server
        self.key_id, self.secret = server.create_access_key(f"file-{uuid.uuid4().hex[:8]}")
        self.sdk = Sdk(server, self.key_id, self.secret)
        self.prefix = tmp_path / "prefix"
        self.instance_id = register_agent(server, self.key_id, self.secret, self.prefix)
        self.agents: list[AgentProcess] = []

    def start_agent(self, server_url: str = "") -> AgentProcess:
        agent = AgentProcess(self.prefix, server_url)
        self.agents.append(agent)
        agent.wait_connected()
        return agent

    def send(self, target: Path, content: bytes, **params: Any) -> str:
        from aliyunsdkecs.request.v20140526 import SendFileRequest

        values: dict[str, Any] = {
            "InstanceIds": [self.instance_id],
            "Name": "app.conf",
            "Content": base64.b64encode(content).decode(),
            "ContentType": "Base64",
            "TargetDir": str(target),
        }
        values.update(params)
        return str(self.sdk.do(SendFileRequest.SendFileRequest(), **values)["InvokeId"])

    def wait(self, invoke_id: str, timeout: float = 30) -> dict[str, Any]:
        """The instance's result once the file task is done."""
        from aliyunsdkecs.request.v20140526 import DescribeSendFileResultsRequest

        deadline = time.monotonic() + timeout
        while True:
            body = self.sdk.do(
                DescribeSendFileResultsRequest.DescribeSendFileResultsRequest(), InvokeId=invoke_id
            )
            (item,) = body["Invocations"]["Invocation"]
            if item["InvocationStatus"] in DONE:
                return dict(item["InvokeInstances"]["InvokeInstance"][0])
            assert time.monotonic() < deadline, item
            time.sleep(0.2)


@pytest.fixture
def env(server: ServerHandle, tmp_path: Path) -> Iterator[Env]:
    environment = Env(server, tmp_path)
    yield environment
    for agent in environment.agents:
        agent.stop()


def test_file_lands_with_mode_and_owner_and_overwrite_is_honoured(env: Env, tmp_path: Path) -> None:
    env.start_agent()
    target = tmp_path / "etc" / "app"
    invoke = env.send(target, b"port=8080\n", FileMode="0640", FileOwner="nobody")
    result = env.wait(invoke)
    assert (result["InvocationStatus"], result["ErrorCode"]) == ("Success", "")
    written = target / "app.conf"
    info = written.stat()
    assert written.read_bytes() == b"port=8080\n"
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert info.st_uid == pwd.getpwnam("nobody").pw_uid and info.st_gid == 0  # group root
    assert [p.name for p in target.iterdir()] == ["app.conf"]

    again = env.wait(env.send(target, b"port=9090\n"))
    assert again["InvocationStatus"] == "Failed" and again["ErrorCode"] == "FileAlreadyExists"
    assert written.read_bytes() == b"port=8080\n"
    replaced = env.wait(env.send(target, b"port=9090\n", Overwrite=True))
    assert replaced["InvocationStatus"] == "Success"
    assert written.read_bytes() == b"port=9090\n"
    assert stat.S_IMODE(written.stat().st_mode) == 0o644 and written.stat().st_uid == 0
    unknown = env.wait(env.send(target, b"x", Name="u", FileOwner="no-such-user-xyz"))
    assert unknown["ErrorCode"] == "AccountNotExists" and not (target / "u").exists()


def test_symlink_target_dir_out_of_the_allowed_place_is_refused(env: Env, tmp_path: Path) -> None:
    agent = env.start_agent()
    outside = tmp_path / "outside"
    outside.mkdir()
    allowed = tmp_path / "srv"
    allowed.mkdir()
    (allowed / "conf").symlink_to(outside)
    result = env.wait(env.send(allowed / "conf", b"evil\n", Overwrite=True))
    assert (result["InvocationStatus"], result["ErrorCode"]) == ("Failed", "FilePathInvalid")
    assert "symbolic link" in result["ErrorInfo"]
    deeper = env.wait(env.send(allowed / "conf" / "sub", b"evil\n"))
    assert deeper["ErrorCode"] == "FilePathInvalid"
    assert list(outside.iterdir()) == []  # nothing written (or made) outside
    assert [p.name for p in allowed.iterdir()] == ["conf"]
    assert agent.proc.poll() is None


def rewrite_file_content(path: str, body: bytes) -> bytes:
    """Change each listed file's content in transit (same length, valid JSON)."""
    if not path.endswith("/v1/task/list"):
        return body
    listing = json.loads(body)
    for task in listing.get("files", []):
        data = base64.b64decode(task["content"]).replace(b"good", b"evil")
        task["content"] = base64.b64encode(data).decode()
    return json.dumps(listing, separators=(",", ":")).encode()


@pytest.mark.parametrize("attack", ["tampered", "unsigned"])
def test_tampered_or_unsigned_file_task_writes_nothing(
    env: Env, tmp_path: Path, attack: str
) -> None:
    target = tmp_path / "dest"
    with MitmProxy(env.server.url) as proxy:
        if attack == "tampered":
            proxy.rewrite = rewrite_file_content
        else:
            proxy.unsign = lambda path: path.endswith("/v1/task/list")
        agent = AgentProcess(env.prefix, proxy.url)
        env.agents.append(agent)
        invoke = env.send(target, b"good\n")
        result = env.wait(invoke, timeout=60)
        expected = (
            protocol.REFUSED_BAD_SIGNATURE if attack == "tampered" else protocol.REFUSED_UNSIGNED
        )
        assert (result["InvocationStatus"], result["ErrorCode"]) == ("Failed", expected)
        assert not target.exists()  # neither the rewritten nor the original file
        listed = [b for p, _, _, b in proxy.answers if p.endswith("/v1/task/list")]
        assert any(json.loads(b).get("files") for b in listed)  # the attack went through
        assert agent.proc.poll() is None  # the agent keeps running
    assert agent.stop() == 0
    assert "Traceback" not in agent.log()


def assist(env: Env, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator CLI as a subprocess, configured for the env's account."""
    environ = {**agent_env(), "XDG_CONFIG_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "server.operator_cli", *args],
        capture_output=True,
        text=True,
        env=environ,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def test_assist_send_file_waits_prints_results_and_exits_like_run(env: Env, tmp_path: Path) -> None:
    env.start_agent()
    home = tmp_path / "cfg"
    configure = assist(
        env,
        home,
        "configure",
        "--access-key-id",
        env.key_id,
        "--access-key-secret",
        env.secret,
        "--region",
        "cn-hangzhou",
        "--endpoint",
        env.server.url,
    )
    assert configure.returncode == 0, configure.stderr
    local = tmp_path / "motd.txt"
    local.write_bytes(b"hello from the CLI\n")
    target = tmp_path / "vm" / "etc"
    args = ["send-file", str(local), "--instance", env.instance_id, "--target-dir", str(target)]
    done = assist(env, home, *args, "--mode", "0600", "--owner", "nobody", "--poll-interval", "0.2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split() == ["INSTANCE", "STATUS", "ERROR"]
    assert done.stdout.splitlines()[1].split() == [env.instance_id, "Success"]
    written = target / "motd.txt"
    assert written.read_bytes() == b"hello from the CLI\n"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert written.stat().st_uid == pwd.getpwnam("nobody").pw_uid

    again = assist(env, home, *args, "--json", "--poll-interval", "0.2")
    assert again.returncode == 1, again.stderr  # a failed instance: exit 1, as `assist run`
    (result,) = json.loads(again.stdout)["Results"]
    assert (result["InvocationStatus"], result["ErrorCode"]) == ("Failed", "FileAlreadyExists")
    replaced = assist(
        env,
        home,
        "send-file",
        "--content",
        "new\n",
        "--name",
        "motd.txt",
        "--overwrite",
        "--instance",
        env.instance_id,
        "--target-dir",
        str(target),
        "--poll-interval",
        "0.2",
    )
    assert replaced.returncode == 0, replaced.stderr
    assert written.read_bytes() == b"new\n"

    no_name = assist(
        env, home, "send-file", "--content", "x", "--instance", "i-1", "--target-dir", "/t"
    )
    assert no_name.returncode == 2 and "--name" in no_name.stderr
    big = tmp_path / "big"
    big.write_bytes(b"a" * (32 * 1024 + 1))
    too_big = assist(env, home, "send-file", str(big), "--instance", "i-1", "--target-dir", "/t")
    assert too_big.returncode == 2 and "32768" in too_big.stderr
    from aliyunsdkecs.request.v20140526 import DescribeSendFileResultsRequest

    listed = env.sdk.do(DescribeSendFileResultsRequest.DescribeSendFileResultsRequest())
    assert listed["TotalCount"] == 3  # the refused calls sent nothing
