"""Task output: the tail kept for the final report, and the chunks streamed while running.

Bytes stay bytes end to end (invalid UTF-8 included); they become base64 only on the wire.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass


def b64(data: bytes) -> str:
    """Base64 text of `data` for the wire."""
    return base64.b64encode(data).decode("ascii")


@dataclass
class Chunk:
    """A piece of the output stream at byte `offset`."""

    offset: int
    data: bytes


class OutputCollector:
    """Keep the last `quota` bytes and hand out size-limited chunks of what is new."""

    def __init__(self, quota: int = 24 * 1024, chunk_size: int = 8 * 1024) -> None:
        self.quota = quota
        self.chunk_size = chunk_size
        self.total = 0  # bytes seen
        self._tail = bytearray()
        self._streamed_to = 0  # stream offset up to which chunks were handed out (or skipped)
        self._pending = bytearray()  # bytes after _streamed_to, at most chunk_size kept

    def feed(self, data: bytes) -> None:
        """Add bytes the process wrote."""
        if not data:
            return
        self.total += len(data)
        self._tail += data
        if len(self._tail) > self.quota:
            del self._tail[: len(self._tail) - self.quota]
        room = self.chunk_size - len(self._pending)
        if room > 0:
            self._pending += data[:room]

    def take_chunk(self) -> Chunk | None:
        """The next chunk to stream (at most chunk_size bytes); bytes beyond it are skipped."""
        if self.total == self._streamed_to:
            return None
        chunk = Chunk(self._streamed_to, bytes(self._pending))
        self._streamed_to = self.total
        self._pending = bytearray()
        return chunk

    @property
    def tail(self) -> bytes:
        """The last `quota` bytes of the output."""
        return bytes(self._tail)

    @property
    def dropped(self) -> int:
        """Bytes that did not fit the quota (from the head of the output)."""
        return self.total - len(self._tail)
