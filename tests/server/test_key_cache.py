"""The server's cache of instance keys (server/state.py): kept for minutes, dropped by a forget,
and never filled from a read that a forget overtook (that row may be the one just deregistered).
Pure asyncio with a stand-in store: the database's part is tested in test_replicas.py."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.agent_api.auth import AgentError
from server.notify import Notifier
from server.state import ServerState, Settings

PUBLIC = base64.b64encode(Ed25519PrivateKey.generate().public_key().public_bytes_raw()).decode()


class Store:
    """Answers every read with the instance's row; `during_read` runs while a read is out."""

    def __init__(self) -> None:
        self.reads = 0
        self.deregistered = False
        self.during_read: Any = None

    async def read(self, fn: Any, small: bool = False) -> dict[str, Any]:
        self.reads += 1
        row = {"public_key": PUBLIC, "account": "acct", "deregistered": self.deregistered}
        await asyncio.sleep(0)
        if self.during_read is not None:
            self.during_read()
        return row


def state_with(store: Store) -> ServerState:
    return ServerState(settings=Settings(), store=store, notifier=Notifier())  # type: ignore[arg-type]


def test_a_key_is_read_once_then_cached_until_a_forget() -> None:
    async def scenario() -> None:
        store = Store()
        state = state_with(store)
        for _ in range(3):
            assert (await state.instance_key("mi-1")).account == "acct"
        assert store.reads == 1
        store.deregistered = True
        await state.forget_instance("mi-1")
        with pytest.raises(AgentError):
            await state.instance_key("mi-1")

    asyncio.run(scenario())


def test_a_read_overtaken_by_a_forget_is_used_once_but_not_kept() -> None:
    async def scenario() -> None:
        store = Store()
        state = state_with(store)
        # the row was read before the deregistration committed; its forget arrives meanwhile
        store.during_read = lambda: state.notifier.on_forget(["mi-1"])
        await state.instance_key("mi-1")
        store.during_read, store.deregistered = None, True
        with pytest.raises(AgentError):  # read again, not served from a stale cache entry
            await state.instance_key("mi-1")
        assert store.reads == 2

    asyncio.run(scenario())
