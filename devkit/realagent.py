"""Helpers to drive the real agent (`python -m agent.cli`) against the real assist-server.

The operator side goes through the official SDK (aliyunsdkcore + aliyunsdkecs request classes
with a custom loopback endpoint), exactly like the original README.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devkit.agent import register_args
from devkit.server import ServerHandle

REPO_ROOT = Path(__file__).resolve().parents[2]

AGENT_CONFIG = """\
[agent]
poll_timeout = 5.0
chunk_interval = 0.3
heartbeat = 5.0

[update]
schedule = ""
"""


class Sdk:
    """Operator calls through the official SDK against the local server."""

    def __init__(self, server: ServerHandle, key_id: str, secret: str) -> None:
        from aliyunsdkcore.client import AcsClient

        self.server = server
        self.client = AcsClient(key_id, secret, "cn-hangzhou", timeout=30)

    def do(self, request: Any, **params: Any) -> dict[str, Any]:
        """Set params with the request class's setters, send it, parse the JSON."""
        for name, value in params.items():
            getattr(request, f"set_{name}")(value)
        from aliyunsdkcore.http import protocol_type

        scheme, endpoint = self.server.url.split("://", 1)
        request.set_endpoint(endpoint)
        # the SDK tells https by identity (`is protocol_type.HTTPS`): pass its own constant
        request.set_protocol_type(protocol_type.HTTPS if scheme == "https" else protocol_type.HTTP)
        return dict(json.loads(self.client.do_action_with_exception(request)))

    def run_script(self, script: str, instance_id: str, **invoke: Any) -> str:
        """CreateCommand + InvokeCommand; returns the InvokeId."""
        import base64

        from aliyunsdkecs.request.v20140526 import CreateCommandRequest, InvokeCommandRequest

        create: dict[str, Any] = {
            "CommandContent": base64.b64encode(script.encode()).decode(),
            "Type": "RunShellScript",
            "Name": "agent-e2e",
        }
        for name in ("Timeout", "Type"):
            if name in invoke:
                create[name] = invoke.pop(name)
        command_id = self.do(CreateCommandRequest.CreateCommandRequest(), **create)["CommandId"]
        invoke.setdefault("Timed", False)
        answer = self.do(
            InvokeCommandRequest.InvokeCommandRequest(),
            CommandId=command_id,
            InstanceIds=[instance_id],
            **invoke,
        )
        return str(answer["InvokeId"])

    def result(self, invoke_id: str, instance_id: str) -> dict[str, Any]:
        """The legacy ResultItem the README reads."""
        from aliyunsdkecs.request.v20140526 import DescribeInvocationResultsRequest

        body = self.do(
            DescribeInvocationResultsRequest.DescribeInvocationResultsRequest(),
            InstanceId=instance_id,
            InvokeId=invoke_id,
        )
        items = body["Invocation"]["ResultLists"]["ResultItem"]
        return dict(items[0]) if items else {}

    def wait_result(
        self, invoke_id: str, instance_id: str, statuses: tuple[str, ...], timeout: float = 30
    ) -> dict[str, Any]:
        """Poll DescribeInvocationResults until the status is one of `statuses`."""
        deadline = time.monotonic() + timeout
        while True:
            item = self.result(invoke_id, instance_id)
            if item.get("InvocationStatus") in statuses:
                return item
            assert time.monotonic() < deadline, item
            time.sleep(0.2)

    def stop(self, invoke_id: str) -> None:
        from aliyunsdkecs.request.v20140526 import StopInvocationRequest

        self.do(StopInvocationRequest.StopInvocationRequest(), InvokeId=invoke_id)


def wait_until(predicate: Callable[[], object], timeout: float = 20.0) -> bool:
    """Poll `predicate` every 0.1 s until it is true (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def agent_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p)
    return env


def register_agent(server: ServerHandle, key_id: str, secret: str, prefix: Path) -> str:
    """`assist-agent register` with a fresh activation; returns the instance id."""
    act_id, code = server.create_activation(key_id, secret, count=5)
    (prefix / "config").mkdir(parents=True, exist_ok=True)
    (prefix / "config" / "assist.toml").write_text(AGENT_CONFIG)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            *register_args(server.url, (act_id, code), prefix),
        ],
        capture_output=True,
        text=True,
        env=agent_env(),
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


class AgentProcess:
    """`assist-agent run --prefix P` as a real subprocess, logging to <prefix>/log/agent.log."""

    def __init__(self, prefix: Path, server_url: str = "") -> None:
        self.prefix = prefix
        log_dir = prefix / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / "agent.log"
        argv = [sys.executable, "-m", "agent.cli", "run", "--prefix", str(prefix), "-v"]
        if server_url:
            argv += ["--server", server_url]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=agent_env(), start_new_session=True
            )

    def wait_connected(self, timeout: float = 20) -> None:
        health = self.prefix / "state" / "health.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                record = json.loads(health.read_text())
                if record["connected"] and record["pid"] == self.proc.pid:
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise AssertionError("agent did not connect:\n" + self.log())

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        return int(self.proc.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def server_executions(server: ServerHandle, invoke_id: str) -> list[tuple[str, str]]:
    """(execution_id, status) rows the server stored for an invocation (SQLite servers)."""
    path = server.db_url[len("sqlite:///") :]
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT execution_id, status FROM executions WHERE invoke_id = ? ORDER BY execution_id",
            (invoke_id,),
        ).fetchall()
    return [(str(a), str(b)) for a, b in rows]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


class AgentEnv:
    """A fresh operator account on `server` (its SDK client), agents registered under `tmp_path`
    and the real agents a test starts; `close()` stops them."""

    def __init__(self, server: ServerHandle, account_prefix: str, tmp_path: Path) -> None:
        self.server = server
        self.key_id, self.secret = server.create_access_key(
            f"{account_prefix}-{uuid.uuid4().hex[:8]}"
        )
        self.sdk = Sdk(server, self.key_id, self.secret)
        self.tmp_path = tmp_path
        self.agents: list[AgentProcess] = []

    def register(self, name: str) -> tuple[Path, str]:
        """`assist-agent register` into tmp_path/name with a fresh activation: (prefix, id)."""
        prefix = self.tmp_path / name
        return prefix, register_agent(self.server, self.key_id, self.secret, prefix)

    def start_agent(self, prefix: Path, server_url: str = "") -> AgentProcess:
        """`assist-agent run` on `prefix`, once it has connected."""
        agent = AgentProcess(prefix, server_url)
        self.agents.append(agent)
        agent.wait_connected()
        return agent

    def close(self) -> None:
        for agent in self.agents:
            agent.stop()
