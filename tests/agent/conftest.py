"""Fixtures for agent tests: the protocol stand-in server and in-process agents against it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# pytest puts this directory on sys.path (no __init__.py here: a package named after this
# folder would shadow the real `agent` package)
from agent_fakeserver import FakeServer, register

from agent.daemon import Agent, AgentOptions
from agent.identity import Identity
from agent.power import RecordingPower
from agent.schedule import Boot
from common.config import Config


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


@dataclass
class AgentHarness:
    """An in-process agent on its own thread."""

    agent: Agent
    thread: threading.Thread
    power: RecordingPower
    identity: Identity
    prefix: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(20)
        assert not self.thread.is_alive()


@pytest.fixture
def start_agent(tmp_path: Path, fake_server: FakeServer) -> Iterator[Callable[..., AgentHarness]]:
    running: list[AgentHarness] = []

    def start(
        prefix: Path | None = None,
        boot: Boot | None = None,
        identity: Identity | None = None,
        updater_command: list[str] | None = None,
        **agent_config: Any,
    ) -> AgentHarness:
        prefix = prefix or tmp_path / "prefix"
        config = Config(prefix=prefix)
        config.agent.poll_timeout = 5
        config.agent.chunk_interval = 0.3
        config.update.schedule = ""
        for key, value in agent_config.items():
            if hasattr(config.agent, key):
                setattr(config.agent, key, value)
            else:
                setattr(config.update, key.removeprefix("update_"), value)
        if identity is None:
            identity = register(fake_server.url, fake_server.activation(), config.layout.state_dir)
        power = RecordingPower()
        options = AgentOptions(
            server=fake_server.url,
            identity=identity,
            power=power,
            kill_grace=1.0,
            updater_command=updater_command,
        )
        if boot is not None:
            options.boot_reader = lambda: boot
        agent = Agent(config, options)
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        harness = AgentHarness(agent, thread, power, identity, prefix)
        running.append(harness)
        return harness

    yield start
    for harness in running:
        if harness.thread.is_alive():
            harness.stop()
