"""The output spool stays bounded on disk and still yields the exact tail and Dropped."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.spool import Spool, previous_segment, read_tail, spool_path

QUOTA = 1000
HEADER = 12


def spool_bytes(path: Path) -> int:
    """Bytes the spool occupies now (both segments)."""
    return sum(p.stat().st_size for p in (path, previous_segment(path)) if p.exists())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=3 * QUOTA), max_size=40))
def test_spool_keeps_the_exact_tail_within_two_segments(sizes: list[int]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = spool_path(Path(tmp), "t-1", "0")
        spool = Spool(path, QUOTA)
        written = bytearray()
        for n, size in enumerate(sizes):
            data = bytes((n * 7 + i) % 251 for i in range(size))
            spool.write(data)
            written += data
            assert spool_bytes(path) <= 2 * (QUOTA + HEADER)
            tail, dropped = read_tail(path, QUOTA)
            assert tail == bytes(written[-QUOTA:])
            assert dropped == len(written) - len(tail)
        spool.discard()
        assert not path.exists() and not previous_segment(path).exists()


def test_spool_files_are_private(tmp_path: Path) -> None:
    path = spool_path(tmp_path / "state", "t-1", "0")
    spool = Spool(path, QUOTA)
    spool.write(b"x" * (QUOTA + 10))
    spool.write(b"y" * 10)
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    for segment in (path, previous_segment(path)):
        assert os.stat(segment).st_mode & 0o777 == 0o600


def test_a_crash_between_the_two_renames_loses_nothing_reported(tmp_path: Path) -> None:
    path = spool_path(tmp_path, "t-1", "0")
    spool = Spool(path, QUOTA)
    spool.write(b"a" * QUOTA)  # the current segment is full
    spool.close()
    os.replace(path, previous_segment(path))  # the agent died right after the first rename
    assert read_tail(path, QUOTA) == (b"a" * QUOTA, 0)
    assert read_tail(path, 10) == (b"a" * 10, QUOTA - 10)


def test_an_older_agents_huge_spool_is_read_from_its_end_only(tmp_path: Path) -> None:
    path = spool_path(tmp_path, "t-1", "0")
    path.parent.mkdir()
    with open(path, "wb") as handle:  # headerless, as agents before the bounded spool wrote
        handle.seek(50 * 1024 * 1024)  # sparse: 50 MiB of zeros first
        handle.write(b"the end\n")
    tail, dropped = read_tail(path, 8)
    assert (tail, dropped) == (b"the end\n", 50 * 1024 * 1024)
