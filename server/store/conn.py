"""The connection interface transaction functions are written against."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Conn(Protocol):
    """What a transaction function may use: execute, run_sync, dialect."""

    @property
    def dialect(self) -> Any: ...

    async def execute(self, statement: Any, parameters: Any = None) -> Any: ...

    async def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any: ...


TxFunction = Callable[[Conn], Coroutine[Any, Any, T]]
