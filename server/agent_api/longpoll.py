"""The long-poll, GET /luban/api/v1/notify: an ASGI endpoint of its own, outside Starlette.

When an InvokeCommand reaches 10,000 parked polls, the server's time per woken agent is the
fan-out (docs/scale.md). So a parked poll is one future (server/notify.py), told of its
client's disconnect by the server's own protocol (common/connguard.py DISCONNECT_WATCH) rather
than by a task of its own, and a kick answered to an agent that asks for shared answers
(`shared=1`) is the same bytes, signed once, for every instance it woke: no signature, JSON or
Starlette response per agent. Everything else (errors, timeouts, several events, a
task whose delivery was not claimed, older agents) gets the per-request signed answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from common.connguard import DISCONNECT_WATCH
from common.protocol import SHARED_PARAM
from server.agent_api import auth, respond
from server.agent_api.auth import AgentError
from server.inputs import ascii_int
from server.notify import Delivery
from server.state import AgentIdentity, ServerState

PATH = "/luban/api/v1/notify"


async def long_poll(state: ServerState, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one long-poll: at once when an event is pending for the instance, else when one
    comes, on timeout, or never when the client leaves first (its events stay queued)."""
    request = Request(scope, receive)
    shared: tuple[bytes, list[tuple[bytes, bytes]]] | None = None

    async def work() -> dict[str, Any]:
        nonlocal shared
        who, timeout, wants_shared = await admit(state, request)
        deliveries = await park(state, request, who.instance_id, timeout)
        events = [await carried_tasks(state, who.instance_id, d) for d in deliveries]
        if wants_shared and len(deliveries) == 1 and events[0] is deliveries[0].event:
            shared = await shared_answer(state, respond.target(scope)[0], deliveries[0])
        # an answered long-poll counts as a heartbeat: the agent may stop its own
        return {"events": events, "heartbeat": True}

    payload, status, headers = await respond.outcome(PATH, work())
    if shared is not None and status == 200:
        body, raw_headers = shared
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})
        return
    response = await respond.signed_answer(state, request, payload, status, headers)
    await response(scope, receive, send)


class Endpoint:
    """The long-poll as a Starlette route (its method checks, 405 for the others); the
    application sends a GET straight to `long_poll` without the router (server/app.py)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await long_poll(scope["app"].state.server, scope, receive, send)


async def admit(state: ServerState, request: Request) -> tuple[AgentIdentity, float, bool]:
    """The verified caller, its timeout and whether it takes shared answers; its nonce is
    stored before it parks (batched per replica: server/agent_api/batch.py), so a replay, on
    any replica, is refused before it can dismiss or take anything."""
    path, raw_query = respond.target(request.scope)
    who = await state.authenticate(request.method, path, raw_query, request.headers, b"")
    query = QueryParams(raw_query)
    timeout = ascii_int(query.get("timeout", "25"), 6)
    if timeout is None or timeout > state.settings.max_poll:
        raise AgentError("InvalidParameter", f"timeout must be 0..{state.settings.max_poll}")
    if not await state.batch.claim_nonce(who.nonce_key, who.nonce_expires):
        raise auth.unauthorized("nonce already used", "ReplayedRequest")
    state.batch.note_seen(who.instance_id, int(time.time() * 1000))
    shared = query.get(SHARED_PARAM) == "1"
    return who, float(timeout), shared


async def park(
    state: ServerState, request: Request, instance_id: str, timeout: float
) -> list[Delivery]:
    """Wait on the notifier until something is delivered; [] on timeout or once the client
    is gone (then what it was handed goes back for the next poll)."""
    watch = request.scope.get("extensions", {}).get(DISCONNECT_WATCH)
    if watch is None:  # another ASGI server: a task waits for the disconnect (or the answer)
        gone: asyncio.Future[Any] = asyncio.ensure_future(disconnected(request.receive))
        unwatch: Callable[[], None] = lambda: None  # noqa: E731
    else:  # assist-server's own protocol tells: no task per parked poll
        gone = asyncio.get_running_loop().create_future()

        def left() -> None:
            if not gone.done():
                gone.set_result(None)

        unwatch = watch(left)
    try:
        deliveries = await state.notifier.park(instance_id, timeout, gone)
    finally:
        unwatch()
    if gone.done() and deliveries:  # it left just as it was woken: keep them for the next
        state.notifier.give_back(instance_id, deliveries)
        return []
    return deliveries


async def disconnected(receive: Receive) -> None:
    """Return once the ASGI server reports the client's disconnect (or the answer sent)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def carried_tasks(state: ServerState, instance_id: str, delivery: Delivery) -> Any:
    """The event as this instance may get it: a kick keeps only the tasks whose delivery was
    claimed (server/agent_api/batch.py), so a task stopped before it went out is never carried;
    a kick left with none goes without `tasks` and the agent lists its tasks instead. The very
    event object comes back when every task was claimed (it may then be answered shared), at
    once when InvokeCommand claimed them itself for this parked poll."""
    event = delivery.event
    carried = event.get("tasks") if isinstance(event, dict) else None
    if not carried or instance_id in delivery.claimed:
        return event
    claims = [state.batch.claim_delivery(str(t["invoke_id"]), instance_id) for t in carried]
    claimed = await asyncio.gather(*claims)
    if all(claimed):
        return event
    kept = [task for task, ok in zip(carried, claimed) if ok]
    bare = {k: v for k, v in event.items() if k != "tasks"}
    return {**bare, "tasks": kept} if kept else bare


async def shared_answer(
    state: ServerState, path: str, delivery: Delivery
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The delivery's answer for its whole audience, built and signed on first use."""
    if delivery.shared is None:
        key = await state.signing.current()
        if delivery.shared is None:  # another poll of the audience may have built it meanwhile
            delivery.shared = respond.shared_kick(key, path, delivery.event, delivery.audience)
    shared: tuple[bytes, list[tuple[bytes, bytes]]] = delivery.shared
    return shared
