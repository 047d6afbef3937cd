"""The output spool stays bounded on disk and still yields the exact tail and Dropped."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.spool import Spool, read_tail, spool_path

QUOTA = 1000
HEADER = 16


def spool_bytes(path: Path) -> int:
    """Bytes the spool occupies now."""
    return path.stat().st_size if path.exists() else 0


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
            assert spool_bytes(path) <= 2 * QUOTA + HEADER
            tail, dropped = read_tail(path, QUOTA)
            assert tail == bytes(written[-QUOTA:])
            assert dropped == len(written) - len(tail)
        spool.discard()
        assert not path.exists()


def test_spool_files_are_private(tmp_path: Path) -> None:
    path = spool_path(tmp_path / "state", "t-1", "0")
    spool = Spool(path, QUOTA)
    spool.write(b"x" * (QUOTA + 10))
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    assert os.stat(path).st_mode & 0o777 == 0o600


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=3 * QUOTA), min_size=1, max_size=20),
    st.integers(min_value=1, max_value=QUOTA),
)
def test_a_crash_between_data_and_header_keeps_the_promised_tail(
    sizes: list[int], torn: int
) -> None:
    """The agent died after writing the next piece's bytes but before the header said so."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = spool_path(Path(tmp), "t-1", "0")
        spool = Spool(path, QUOTA)
        for n, size in enumerate(sizes):
            spool.write(bytes([n % 256]) * size)
        before = read_tail(path, QUOTA)
        ring = 2 * QUOTA
        with open(path, "r+b") as handle:  # the torn write: up to QUOTA new bytes, no header
            for i in range(torn):
                handle.seek(HEADER + (spool.total + i) % ring)
                handle.write(b"!")
        assert read_tail(path, QUOTA) == before
        spool.discard()


def test_an_older_agents_huge_spool_is_read_from_its_end_only(tmp_path: Path) -> None:
    path = spool_path(tmp_path, "t-1", "0")
    path.parent.mkdir()
    with open(path, "wb") as handle:  # headerless, as agents before the bounded spool wrote
        handle.seek(50 * 1024 * 1024)  # sparse: 50 MiB of zeros first
        handle.write(b"the end\n")
    tail, dropped = read_tail(path, 8)
    assert (tail, dropped) == (b"the end\n", 50 * 1024 * 1024)


def test_a_spool_that_cannot_be_written_is_given_up_without_failing_the_task(
    tmp_path: Path, caplog
) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "state").write_text("a file where the state directory should be")
    spool = Spool(spool_path(tmp_path / "state", "t-1", "0"), QUOTA)
    spool.write(b"first")  # no exception: the runner goes on pumping output
    spool.write(b"second")
    assert spool.failed
    assert len([r for r in caplog.records if "cannot spool" in r.getMessage()]) == 1
    spool.discard()
