"""The output quota the server enforces, the same rule as the agent's (agent/output.py): keep
the *tail* of a task's output up to the quota and count what was cut as `Dropped`.

An agent key is not trusted to follow its own quota (docs/SECURITY.md, "unbounded output"):
terminal reports are clipped to the tail, a streamed chunk longer than the quota keeps its
tail, and the chunks stored for one execution are trimmed to those that hold the newest
`quota` bytes, at most MAX_CHUNKS of them. Pure functions over bytes and offsets.
"""

from __future__ import annotations

import base64
import dataclasses

from common.config import AgentConfig

DEFAULT_QUOTA = AgentConfig.output_quota  # bytes; the agent's default, one home for both
MAX_CHUNKS = 64  # streamed chunks kept per execution


def clip_tail(data: bytes, dropped: int, quota: int) -> tuple[bytes, int]:
    """The last `quota` bytes of `data`, and `dropped` plus what was cut off its head."""
    if len(data) <= quota:
        return data, dropped
    return data[len(data) - quota :], dropped + len(data) - quota


def clip_report(output_b64: str, dropped: int, quota: int) -> tuple[str, int]:
    """A terminal report's base64 output and Dropped, with the output kept to the quota."""
    if len(output_b64) <= quota:  # base64 is longer than its bytes: surely within
        return output_b64, dropped
    data, dropped = clip_tail(base64.b64decode(output_b64), dropped, quota)
    return base64.b64encode(data).decode("ascii"), dropped


def clip_chunk(offset: int, data_b64: str, quota: int) -> tuple[int, str]:
    """A streamed chunk at `offset`, keeping its last `quota` bytes (the offset moves along)."""
    if len(data_b64) <= quota:
        return offset, data_b64
    data = base64.b64decode(data_b64)
    kept, cut = clip_tail(data, 0, quota)
    return offset + cut, base64.b64encode(kept).decode("ascii")


@dataclasses.dataclass(frozen=True)
class StoredChunk:
    """A stored chunk: its stream offset and decoded size in bytes."""

    offset: int
    size: int


def chunks_to_drop(chunks: list[StoredChunk], quota: int, max_chunks: int) -> list[int]:
    """Offsets of the stored chunks to delete: those wholly before the newest `quota` bytes of
    the stream, and all but the newest `max_chunks`."""
    newest = sorted(chunks, key=lambda c: c.offset, reverse=True)
    if not newest:
        return []
    end = max(c.offset + c.size for c in newest)
    drop = [c.offset for c in newest[max_chunks:]]
    drop += [c.offset for c in newest[:max_chunks] if c.offset + c.size <= end - quota]
    return sorted(set(drop))


def running_tail(data: bytes, quota: int) -> bytes:
    """What a running execution shows: the last `quota` bytes streamed so far."""
    return clip_tail(data, 0, quota)[0]


def b64_size(data_b64: str) -> int:
    """Decoded size of canonical base64 text, without decoding it."""
    return len(data_b64) * 3 // 4 - data_b64[-2:].count("=") if data_b64 else 0
