"""Operator API actions (ECS 2014-05-26), one module per action group."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from server.rpc import ApiError, Params, invalid
from server.store import Store, access
from server.store.conn import Conn, T, TxFunction

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


# Actions that store their request's nonce in their own write transaction (p.nonce.write):
# one database step fewer on InvokeCommand's path, which a fan-out to 10,000 agents queues
# behind every poll the calls before it woke (docs/scale.md, Fan-out).
OWN_NONCE: set[str] = set()


class SignedNonce:
    """A signed request's nonce, stored exactly once before the request has any effect:
    in the first write transaction of an action that asks for it (`write`), else on its own
    (`store`); a nonce stored before answers SignatureNonceUsed either way."""

    def __init__(self, key: str, expires: int) -> None:
        self.key = key
        self.expires = expires
        self.stored = False

    async def take(self, conn: Conn) -> None:
        if not await access.use_nonce(conn, self.key, self.expires):
            raise ApiError("SignatureNonceUsed", "Specified signature nonce was used already.")

    async def store(self, store: Store) -> None:
        await store.write(self.take, durable=False)
        self.stored = True

    async def write(self, store: Store, fn: TxFunction[T], key: str = "") -> T:
        """`store.write(fn, key=key)` with the nonce taken first in the same transaction."""
        if self.stored:
            return await store.write(fn, key=key)

        async def _tx(conn: Conn) -> T:
            await self.take(conn)
            return await fn(conn)

        result = await store.write(_tx, key=key)
        self.stored = True
        return result


async def run_action(
    state: ServerState, name: str, handler: Handler, account: str, p: Params, nonce: SignedNonce
) -> dict[str, Any]:
    """Run an action with its request's nonce stored exactly once: before it (most actions),
    or by its own write (OWN_NONCE); if it wrote nothing, or failed first, on its own after,
    and a nonce found used then makes the answer SignatureNonceUsed (a replay)."""
    if name not in OWN_NONCE:
        await nonce.store(state.store)
        return await handler(state, account, p)
    p.nonce = nonce
    try:
        result = await handler(state, account, p)
    except Exception as exc:
        replayed = isinstance(exc, ApiError) and exc.code == "SignatureNonceUsed"
        if not nonce.stored and not replayed:
            await nonce.store(state.store)
        raise
    if not nonce.stored:
        await nonce.store(state.store)
    return result


def action(name: str, tags: bool = False, own_nonce: bool = False) -> Callable[[Handler], Handler]:
    """Register an operator action under its API name; one that does not take tags (`tags`)
    refuses Tag.N parameters rather than ignoring a filter and answering everything; one with
    `own_nonce` stores its request's nonce through `p.nonce.write` (OWN_NONCE)."""

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
        if own_nonce:
            OWN_NONCE.add(name)
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
