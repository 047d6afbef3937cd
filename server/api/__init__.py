"""Operator API actions (ECS 2014-05-26), one module per action group."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from server.rpc import Params, invalid

if TYPE_CHECKING:
    from server.state import ServerState

Handler = Callable[["ServerState", str, Params], Awaitable[dict[str, Any]]]
ACTIONS: dict[str, Handler] = {}


# Tag.N.Key / Tag.N.Value, and the fuzzy TagFilter.N.* no action of ours takes
_TAG_PARAM = re.compile(r"^(Tag\.[0-9]+\.(Key|Value)|TagFilter\..*)$")
# Options of the real API this server accepts nowhere: refused when given, never ignored
# (the README's "Not implemented" list).
NOT_IMPLEMENTED = (
    "ContainerId",
    "ContainerName",
    "OssOutputDelivery",
    "ResourceGroupId",
    "WindowsPasswordName",
    "Provider",
    "MachineId",
)
_NOT_IMPLEMENTED = re.compile("^(" + "|".join(NOT_IMPLEMENTED) + r"|ResourceTag\..*)$")
# Options implemented on the actions of the real API that take them, refused on any other
# (where the real API has no such parameter, so a caller relying on it would be misled).
ONLY_ON = {
    "Launcher": ("CreateCommand", "ModifyCommand", "InvokeCommand", "RunCommand"),
    "TerminationMode": ("InvokeCommand", "RunCommand"),
}


def refuse_unimplemented(name: str, p: Params) -> None:
    """InvalidParameter for a real-API option this server does not implement, or one given
    to an action that does not take it."""
    given = sorted(k for k, v in p.raw.items() if v != "" and _NOT_IMPLEMENTED.match(k))
    if given:
        raise invalid(
            given[0], f"This server does not implement {given[0]} (on {name} or anywhere else)."
        )
    for option, actions in ONLY_ON.items():
        if p.raw.get(option, "") != "" and name not in actions:
            raise invalid(option, f"{name} does not take {option} (only {', '.join(actions)}).")


def action(name: str, tags: bool = False) -> Callable[[Handler], Handler]:
    """Register an operator action under its API name; one that does not take tags (`tags`)
    refuses Tag.N parameters rather than ignoring a filter and answering everything."""

    def register(func: Handler) -> Handler:
        async def checked(state: ServerState, account: str, p: Params) -> dict[str, Any]:
            refused = sorted(
                k for k in p.raw if _TAG_PARAM.match(k) and (not tags or "Filter" in k)
            )
            if refused:
                raise invalid(refused[0], f"{name} does not take this tag parameter here.")
            refuse_unimplemented(name, p)
            return await func(state, account, p)

        ACTIONS[name] = checked
        return func

    return register


def load_actions() -> dict[str, Handler]:
    """Import every action module (registration happens at import)."""
    from server.api import (  # noqa: F401
        activations,
        commands,
        files,
        instances,
        invocations,
        settings,
        tags,
    )

    return ACTIONS
