"""A restarted agent takes its long-poll over before it lists its tasks (agent/daemon.py
`_take_over_poll`).

The server keeps one long-poll per instance. The predecessor of a restarted agent can leave a
poll parked there when something between them keeps its side of the connection open (here a
forwarding proxy, as a load balancer would). A kick handed to that poll is answered to nobody;
before this change a kick raised between the new agent's first task listing and its first
long-poll went there, and its task waited for the next listing, up to 300 s later (a dry run
caught it: `test_proxy_rewriting_task_content_gets_nothing_run`, Pending after 30 s).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from agent_mitm import MitmProxy

from devkit.fixtures import agent_env_fixture, server_fixture
from devkit.polling import wait_until
from devkit.realagent import AgentEnv

pytestmark = pytest.mark.xdist_group("agent-e2e")

server = server_fixture("takeover-server")
env = agent_env_fixture("takeover")

HOLD = 3.0  # seconds the new agent's long-polls wait in its proxy: the window for the kick


def parked(env: AgentEnv) -> int:
    return int(requests.get(env.server.url + "/healthz", timeout=5).json()["waiting"])


def test_a_kick_while_a_dead_predecessors_poll_is_parked_reaches_the_new_agent(
    env: AgentEnv, tmp_path: Path
) -> None:
    prefix, instance = env.register("agent")
    with MitmProxy(env.server.url) as old_way, MitmProxy(env.server.url) as new_way:
        old = env.start_agent(prefix, old_way.url)
        wait_until(lambda: parked(env) == 1, timeout=30)
        old.kill9()  # its poll stays parked: the proxy holds the server's side open
        assert parked(env) == 1

        # the new agent's long-polls (not a poll without waiting) are held in its proxy, so
        # the kick below comes after its listing and before its first long-poll
        new_way.hold = lambda target: (
            HOLD if "/v1/notify" in target and "timeout=0" not in target else 0.0
        )
        new = env.start_agent(prefix, new_way.url)
        wait_until(lambda: new_way.count("/v1/task/list") >= 1, timeout=30)
        invoke = env.sdk.run_script("echo 123", instance)
        item = env.sdk.wait_result(invoke, instance, ("Success", "Failed"), timeout=30)
        assert (item["InvocationStatus"], item["Output"]) == ("Success", "MTIzCg==")
        # the predecessor's poll was dismissed empty-handed, before the listing
        notify_answers = [b for p, _, _, b in old_way.answers if p.endswith("/v1/notify")]
        assert notify_answers and b'"events":[]' in notify_answers[-1].replace(b" ", b"")
        firsts = [p.rsplit("/", 1)[-1] for _, p, _, _ in new_way.requests]
        assert firsts.index("notify") < firsts.index("list")
    assert new.stop() == 0
