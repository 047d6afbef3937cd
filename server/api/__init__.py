"""Operator API actions (ECS 2014-05-26), one module per action group."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from server.rpc import Params

if TYPE_CHECKING:
    from server.state import ServerState

Handler = Callable[["ServerState", str, Params], Awaitable[dict[str, Any]]]
ACTIONS: dict[str, Handler] = {}


def action(name: str) -> Callable[[Handler], Handler]:
    """Register an operator action under its API name."""

    def register(func: Handler) -> Handler:
        ACTIONS[name] = func
        return func

    return register


def load_actions() -> dict[str, Handler]:
    """Import every action module (registration happens at import)."""
    from server.api import activations, commands, instances, invocations  # noqa: F401

    return ACTIONS
