"""The network attacker between agent and control plane (issue 16, docs/SECURITY.md).

The real agent (subprocess) and the real assist-server, with a forwarding proxy on loopback in
between that rewrites or replays answers. The agent must run only what its own control plane
signed for this very request, report the refusal, and keep running.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_mitm import MitmProxy

from agent.client import AgentClient
from agent.identity import load_identity
from common import protocol
from devkit.fixtures import agent_env_fixture, server_fixture
from devkit.polling import wait_until
from devkit.realagent import AGENT_CONFIG, AgentEnv, AgentProcess, agent_env, server_executions

pytestmark = pytest.mark.xdist_group("agent-e2e")


server = server_fixture("signed-server")


env = agent_env_fixture("signed")


def rewrite_tasks(change: Callable[[dict[str, Any]], None]) -> Callable[[str, bytes], bytes]:
    """A proxy rewrite applying `change` to every listed task; the answer keeps its length."""

    def rewrite(path: str, body: bytes) -> bytes:
        if path.endswith("/v1/task/list"):
            listing = json.loads(body)
            tasks = listing.get("run", [])
        elif "/v1/notify" in path:  # a kick carries its tasks
            listing = json.loads(body)
            tasks = [t for e in listing.get("events", []) for t in e.get("tasks") or []]
        else:
            return body
        for task in tasks:
            change(task)
        rewritten = json.dumps(listing, separators=(",", ":")).encode()
        assert len(rewritten) == len(body)
        return rewritten

    return rewrite


def _script_123_to_666(task: dict[str, Any]) -> None:
    script = base64.b64decode(task["content"]).replace(b"123", b"666")
    task["content"] = base64.b64encode(script).decode()


rewrite_123_to_666 = rewrite_tasks(_script_123_to_666)


def test_proxy_rewriting_task_content_gets_nothing_run(env: AgentEnv, tmp_path: Path) -> None:
    prefix, instance = env.register("agent")
    marks = tmp_path / "marks"
    marks.mkdir()
    with MitmProxy(env.server.url) as proxy:
        proxy.rewrite = rewrite_123_to_666
        agent = env.start_agent(prefix, proxy.url)
        invoke = env.sdk.run_script(f"echo 123 > {marks}/ran-123", instance)
        try:
            item = env.sdk.wait_result(invoke, instance, ("Success", "Failed"), timeout=60)
        except AssertionError as exc:  # once seen in a dry run: say what the agent did
            raise AssertionError(f"{exc}\nagent log:\n{agent.log()[-6000:]}") from None
        assert item["InvocationStatus"] == "Failed"
        assert item["ErrorCode"] == protocol.REFUSED_BAD_SIGNATURE
        assert item["Output"] == ""
        assert list(marks.iterdir()) == []  # neither the rewritten nor the original script ran
        assert server_executions(env.server, invoke) == [("0", "Failed")]
        rewritten = [
            b
            for p, _, _, b in proxy.answers
            if p.endswith("/v1/task/list") and json.loads(b).get("run")
        ]
        assert rewritten  # the attack really went through the proxy
        assert agent.proc.poll() is None  # the agent keeps running
    assert agent.stop() == 0
    log = agent.log()
    assert "Traceback" not in log and protocol.REFUSED_BAD_SIGNATURE in log

    # the same agent (same identity and pinned key), talking to the server directly
    direct = env.start_agent(prefix, env.server.url)
    invoke = env.sdk.run_script("echo 123", instance)
    item = env.sdk.wait_result(invoke, instance, ("Success", "Failed"))
    assert item["Output"] == "MTIzCg==" and item["InvocationStatus"] == "Success"
    assert direct.stop() == 0


def test_proxy_rewriting_a_tasks_launcher_gets_nothing_run(env: AgentEnv, tmp_path: Path) -> None:
    """The launcher (and the termination mode) are in the signed answer like the script."""
    prefix, instance = env.register("agent")
    marks = tmp_path / "marks"
    marks.mkdir()
    with MitmProxy(env.server.url) as proxy:
        proxy.rewrite = rewrite_tasks(
            lambda task: task.update(launcher=task["launcher"].replace("X=aaa", "X=bbb"))
        )
        agent = env.start_agent(prefix, proxy.url)
        invoke = env.sdk.run_script(
            f'touch "{marks}/ran-$X"', instance, Launcher="env X=aaa /bin/sh"
        )
        item = env.sdk.wait_result(invoke, instance, ("Success", "Failed"), timeout=60)
        assert (item["InvocationStatus"], item["ErrorCode"]) == (
            "Failed",
            protocol.REFUSED_BAD_SIGNATURE,
        )
        assert list(marks.iterdir()) == []  # neither launcher ran
        assert [
            b for p, _, _, b in proxy.answers if p.endswith("/v1/task/list") and b"X=aaa" in b
        ]  # the task list with the launcher really went through the proxy
        assert agent.proc.poll() is None
    assert agent.stop() == 0


def test_task_list_captured_for_one_instance_runs_nothing_on_another(
    env: AgentEnv, tmp_path: Path
) -> None:
    prefix_a, instance_a = env.register("a")
    prefix_b, instance_b = env.register("b")
    marks = tmp_path / "marks"
    marks.mkdir()
    invoke = env.sdk.run_script(f"touch {marks}/ran", instance_a)
    with MitmProxy(env.server.url) as proxy:
        # capture A's signed task list (A's own client, signed request, genuine answer)
        identity_a = load_identity(prefix_a / "state")
        listed = AgentClient(proxy.url, identity_a).list_tasks("startup")
        assert [t["invoke_id"] for t in listed["run"]] == [invoke]
        path, status, headers, captured = proxy.answers[-1]
        assert path.endswith("/v1/task/list")

        def replay(path: str, request_headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
            if path.endswith("/v1/task/list"):
                return status, headers, captured
            return None  # type: ignore[return-value]

        proxy.replay = replay  # type: ignore[assignment]
        # B gets A's list: refused, nothing runs, B keeps running
        agent_b = AgentProcess(prefix_b, proxy.url)  # never "connected": every list is refused
        env.agents.append(agent_b)
        assert wait_until(lambda: proxy.count("/v1/task/list") >= 3)
        assert list(marks.iterdir()) == []
        assert agent_b.proc.poll() is None
        # A gets its own, now stale, list again for a later request: refused too
        with pytest.raises(protocol.ResponseRefusedError) as refused:
            AgentClient(proxy.url, identity_a).list_tasks("poll")
        assert refused.value.code == protocol.REFUSED_REPLAYED
        agent_a = AgentProcess(prefix_a, proxy.url)
        env.agents.append(agent_a)
        assert wait_until(lambda: protocol.REFUSED_REPLAYED in agent_a.log())
        assert list(marks.iterdir()) == []
        assert agent_a.proc.poll() is None
        item = env.sdk.wait_result(invoke, instance_a, ("Success", "Failed"))
        assert item["ErrorCode"] == protocol.REFUSED_REPLAYED  # A reported its refusal
        assert list(marks.iterdir()) == []
    assert protocol.REFUSED_REPLAYED in agent_b.log()
    assert "Traceback" not in agent_a.log() + agent_b.log()


def register_cli(server_url: str, act_id: str, code: str, prefix: Path, *extra: str) -> Any:
    (prefix / "config").mkdir(parents=True, exist_ok=True)
    (prefix / "config" / "assist.toml").write_text(AGENT_CONFIG)
    argv = [sys.executable, "-m", "agent.cli", "register", "--server", server_url]
    argv += ["--activation-id", act_id, "--activation-code", code, "--prefix", str(prefix)]
    return subprocess.run(
        [*argv, *extra], capture_output=True, text=True, env=agent_env(), timeout=60
    )


def test_proxy_swapping_the_server_key_at_registration_fails_it(
    env: AgentEnv, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    attacker = protocol.raw_public_b64(Ed25519PrivateKey.generate())

    def swap_key(path: str, body: bytes) -> bytes:
        if not path.endswith("/instance/register"):
            return body
        answer = json.loads(body)
        answer["server_key"] = attacker  # same length: 32 bytes, base64
        return json.dumps(answer, separators=(",", ":")).encode()

    act_id, code = env.server.create_activation(env.key_id, env.secret, count=5)
    prefix = tmp_path / "swapped"
    with MitmProxy(env.server.url) as proxy:
        proxy.rewrite = swap_key
        done = register_cli(proxy.url, act_id, code, prefix)
        sent = b"".join(body for _, _, _, body in proxy.requests)
    assert done.returncode != 0
    assert "did not prove it holds the activation code" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 2
    assert not (prefix / "state" / "identity.json").exists()
    assert not (prefix / "state" / "server-key.json").exists()
    assert code.encode() not in sent  # the activation code never crossed the wire

    # without the proxy the same activation registers and pins the real key
    done = register_cli(env.server.url, act_id, code, prefix)
    assert done.returncode == 0, done.stderr
    pinned = json.loads((prefix / "state" / "server-key.json").read_text())
    shown = subprocess.run(
        [sys.executable, "-m", "server.cli", "key", "show", "--db", env.server.db_url],
        capture_output=True,
        text=True,
        env=agent_env(),
        timeout=60,
        check=True,
    )
    assert pinned["keys"] == [shown.stdout.strip()] and pinned["source"] == "registration"
    assert (prefix / "state" / "server-key.json").stat().st_mode & 0o777 == 0o600


def test_a_played_back_shared_kick_only_makes_the_agent_list_its_tasks(
    env: AgentEnv, tmp_path: Path
) -> None:
    """A kick's answer is signed once for every instance it woke, so it names no nonce of the
    agent's: the agent takes each kick once, and none signed before it started; a played-back
    kick becomes a task list (signed for its own request), which runs nothing again."""
    prefix, instance = env.register("agent")
    marks = tmp_path / "marks"
    marks.mkdir()
    with MitmProxy(env.server.url) as proxy:
        agent = env.start_agent(prefix, proxy.url)
        agent.wait_connected()
        invoke = env.sdk.run_script(f"echo ran >> {marks}/runs", instance)
        item = env.sdk.wait_result(invoke, instance, ("Success", "Failed"))
        assert item["InvocationStatus"] == "Success"
        kicks = [
            (status, headers, body)
            for path, status, headers, body in proxy.answers
            if path.endswith("/v1/notify")
            and protocol.HEADER_KICK_SIGNATURE.lower() in {k.lower() for k in headers}
        ]
        assert kicks  # the agent asked for the shared answer and got it
        status, headers, captured = kicks[-1]
        assert [t["invoke_id"] for e in json.loads(captured)["events"] for t in e["tasks"]] == [
            invoke
        ]
        played: list[str] = []

        def play_back(path: str, _headers: dict[str, str]) -> Any:
            if path.endswith("/v1/notify") and len(played) < 3:
                played.append(path)
                return status, headers, captured
            return None

        lists = proxy.count("/v1/task/list")
        proxy.replay = play_back
        assert wait_until(lambda: len(played) == 3)
        assert wait_until(lambda: proxy.count("/v1/task/list") >= lists + 3)
        assert agent.proc.poll() is None
        assert agent.stop() == 0
        assert (
            agent.log().count("a shared kick taken before or older than this agent: asking again")
            >= 3
        )

        # restarted (same identity): the kick was signed before this process began
        played.clear()
        again = env.start_agent(prefix, proxy.url)
        assert wait_until(lambda: len(played) == 3)
        assert wait_until(
            lambda: (
                again.log().count(
                    "a shared kick taken before or older than this agent: asking again"
                )
                >= 3
            )
        )
        assert again.proc.poll() is None
        assert again.stop() == 0
    assert (marks / "runs").read_text() == "ran\n"  # run once, whatever was played back
    assert server_executions(env.server, invoke) == [("0", "Success")]
    assert "Traceback" not in agent.log() + again.log()
