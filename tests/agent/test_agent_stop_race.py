"""StopInvocation racing the kick that carries its task: the real agent against the real server.

A kick carries its task, so the agent runs it without listing. The server used to mark such a
task delivered later, in its batched writes; a stop landing before that mark found the task
undelivered and settled it as Cancelled while the agent ran it anyway. The server here batches
every 4 s, which kept that window wide open. Whatever the timing, what the server says must
be what happened on the instance: Cancelled means the task never started; otherwise the run was
killed (Terminated). tests/server/test_long_poll.py covers a stop that wins the race for sure.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devkit.fixtures import agent_env_fixture, server_fixture
from devkit.polling import wait_until
from devkit.realagent import AgentEnv, group_members, server_executions
from devkit.server import FakeAgent

pytestmark = pytest.mark.xdist_group("agent-e2e")

BATCH = 4.0  # seconds between the server's batched writes (its default is 0.25)

server = server_fixture("stop-race-server", extra_args=["--batch-interval", str(BATCH)])
env = agent_env_fixture("race")


@pytest.mark.parametrize("delay", [0.0, 1.0, BATCH + 1.5], ids=["at-once", "soon", "late"])
def test_stop_racing_the_kick_agrees_with_what_ran(
    env: AgentEnv, tmp_path: Path, delay: float
) -> None:
    prefix, instance = env.register("prefix")
    env.start_agent(prefix)
    other = FakeAgent.register(
        env.server.url, *env.server.create_activation(env.key_id, env.secret)
    )
    pidfile, marker = tmp_path / "pgid", tmp_path / "ran"
    other.poll(timeout=0)  # a batched write now, so the next batched one is BATCH seconds away
    invoke = env.sdk.run_script(
        f"echo $$ > {pidfile}; touch {marker}; sleep 60",
        instance,
        TerminationMode="ProcessTree",
    )
    time.sleep(delay)
    env.sdk.stop(invoke)
    item = env.sdk.wait_result(
        invoke, instance, ("Cancelled", "Terminated", "Stopped", "Failed", "Success")
    )
    # the agent handles its events in order: once a later task ran, the kick was dealt with
    after = env.sdk.run_script("echo after", instance)
    assert env.sdk.wait_result(after, instance, ("Success", "Failed"))["InvocationStatus"] == (
        "Success"
    )
    if item["InvocationStatus"] == "Cancelled":
        assert not marker.exists()  # settled on the server: never run on the instance
        assert server_executions(env.server, invoke) == []
    else:
        assert item["InvocationStatus"] == "Terminated", item
        assert marker.exists()
        assert wait_until(lambda: group_members(int(pidfile.read_text())) == [], timeout=10)
        assert server_executions(env.server, invoke) == [("0", "Terminated")]
