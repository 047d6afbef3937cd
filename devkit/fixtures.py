"""pytest fixture factories over the real server and the real agent: a test module says
`server = server_fixture("v3-server")` and `env = agent_env_fixture("signed")`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devkit.realagent import AgentEnv
from devkit.server import ServerHandle, launch_server


def server_fixture(
    name: str, scope: str = "module", extra_args: list[str] | None = None
) -> Callable[..., Iterator[ServerHandle]]:
    """A pytest fixture: one SQLite `assist-server serve` (with `extra_args`) under a fresh temp
    dir `name`, for each module (or other `scope`). In a test module:
    `server = server_fixture("v3-server")`."""

    @pytest.fixture(scope=scope)  # type: ignore[call-overload]
    def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
        handle = launch_server(tmp_path_factory.mktemp(name), extra_args=extra_args)
        try:
            yield handle
        finally:
            handle.stop()

    return server


def agent_env_fixture(
    account_prefix: str, env_class: type[AgentEnv] = AgentEnv
) -> Callable[..., Iterator[AgentEnv]]:
    """A pytest fixture `env`: an `env_class` on the module's `server` fixture, closed after."""

    @pytest.fixture
    def env(server: ServerHandle, tmp_path: Path) -> Iterator[AgentEnv]:
        environment = env_class(server, account_prefix, tmp_path)
        yield environment
        environment.close()

    return env
