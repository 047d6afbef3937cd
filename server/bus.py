"""Messages between the worker processes of one SQLite server (`serve --workers N`).

PostgreSQL replicas tell each other of kicks and key-cache forgets with NOTIFY; the workers of a
SQLite server share no database server to carry them, so each binds a Unix datagram socket in
a directory private to the server (0700, made by the parent process and removed when it exits)
and sends each message to every other socket there. The kernel keeps a datagram whole and in
order; a worker reads its socket from the event loop.

A send waits (on a thread, never on the event loop) while a peer's queue is full, up to
SEND_TIMEOUT; a peer that is gone (its socket refuses) has its socket file removed. A message
that still cannot be sent is logged and dropped, as a failed NOTIFY is: the agents it concerned
list their tasks at their next poll, and a forgotten key expires (server/state.py
KEY_CACHE_TTL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".sock"
MAX_MESSAGE = 60_000  # bytes per datagram (a Unix socket's default buffer holds ~200 KB)
SEND_TIMEOUT = 2.0  # seconds a send waits for a peer to make room
RECEIVE_BUFFER = 4 << 20  # bytes asked for the socket's queue (the kernel caps it)
RECEIVE_SIZE = 4 * MAX_MESSAGE  # bytes read per datagram: more than any sent


class LocalBus:
    """One worker's end: `send` to every other worker, `on_message` for what they send."""

    def __init__(self, directory: str | Path, name: str, on_message: Callable[[str], None]):
        self.directory = Path(directory)
        # a Unix socket's path holds at most 107 bytes: the directory's name is kept short
        self.path = self.directory / f"{name[:16]}{SUFFIX}"
        self.on_message = on_message
        self._inbox: socket.socket | None = None
        self._outbox: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    def start(self) -> None:
        """Bind this worker's socket and read it from the running event loop."""
        inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            inbox.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        inbox.bind(str(self.path))
        os.chmod(self.path, 0o600)
        inbox.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(inbox.fileno(), self._readable)
        self._inbox = inbox
        self._outbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._outbox.settimeout(SEND_TIMEOUT)

    def _readable(self) -> None:
        assert self._inbox is not None
        while True:
            try:
                data = self._inbox.recv(RECEIVE_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("worker bus: receive failed: %s", exc)
                return
            try:
                self.on_message(data.decode())
            except Exception:  # one bad message must not stop the reading
                log.exception("worker bus: a message could not be handled")

    def peers(self) -> list[Path]:
        """The other workers' sockets."""
        try:
            found = [p for p in self.directory.iterdir() if p.name.endswith(SUFFIX)]
        except OSError:
            return []
        return sorted(p for p in found if p != self.path)

    async def send(self, messages: Sequence[str]) -> None:
        """Send every message to every other worker (in order, one sender at a time)."""
        if self._outbox is None or not messages:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            await asyncio.get_running_loop().run_in_executor(None, self._send_all, messages)

    def _send_all(self, messages: Sequence[str]) -> None:
        assert self._outbox is not None
        for peer in self.peers():
            for message in messages:
                try:
                    self._outbox.sendto(message.encode(), str(peer))
                except (ConnectionRefusedError, FileNotFoundError):
                    with contextlib.suppress(OSError):
                        peer.unlink()  # a worker that is gone left its socket behind
                    break
                except OSError as exc:  # a full queue past SEND_TIMEOUT, or too big
                    log.warning("worker bus: a message to %s was dropped: %s", peer.name, exc)

    def close(self) -> None:
        if self._inbox is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._inbox.fileno())
            self._inbox.close()
            self._inbox = None
            with contextlib.suppress(OSError):
                self.path.unlink()
        if self._outbox is not None:
            self._outbox.close()
            self._outbox = None
