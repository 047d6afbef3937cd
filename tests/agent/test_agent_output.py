"""Output collection: tail within the quota, Dropped, size-limited chunks, raw bytes."""

from __future__ import annotations

import base64

from agent.output import OutputCollector, b64


def test_tail_keeps_the_last_quota_bytes_and_counts_dropped() -> None:
    out = OutputCollector(quota=10, chunk_size=4)
    out.feed(b"0123456789")
    out.feed(b"abcdef")
    assert out.tail == b"6789abcdef"
    assert out.dropped == 6
    assert out.total == 16


def test_chunks_are_size_limited_and_carry_stream_offsets() -> None:
    out = OutputCollector(quota=100, chunk_size=4)
    assert out.take_chunk() is None
    out.feed(b"hello world")
    first = out.take_chunk()
    assert first is not None and (first.offset, first.data) == (0, b"hell")
    assert out.take_chunk() is None
    out.feed(b"XYZ")
    second = out.take_chunk()
    assert second is not None and (second.offset, second.data) == (11, b"XYZ")


def test_invalid_utf8_survives_base64() -> None:
    raw = b"ok \xff\xfe\xc3( end"
    out = OutputCollector()
    out.feed(raw)
    assert base64.b64decode(b64(out.tail)) == raw
