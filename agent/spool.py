"""Output spool: each running execution's output tail is kept under state/spool/, so an agent
that dies mid-task can still report what the task printed up to then (the tail within the quota,
and exactly how many bytes were dropped before it).

The spool is bounded: two segment files of at most `quota` bytes each (docs/agent-state.md,
Spool). `<name>.out` is written; when full it becomes `<name>.out.1` and a new `<name>.out`
starts. Each segment begins with a header holding the stream offset of its first byte, so the
reader knows what came before without keeping it. Files are 0600 in a 0700 directory.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

SPOOL_DIR = "spool"
MAGIC = b"ASP1"
_HEADER = struct.Struct(">4sQ")  # magic, stream offset of the segment's first byte
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def spool_path(state_dir: Path, invoke_id: str, execution_id: str) -> Path:
    """Where one execution's output is spooled (the current segment)."""
    name = f"{invoke_id}-{execution_id}.out".replace(os.sep, "_")
    return state_dir / SPOOL_DIR / name


def previous_segment(path: Path) -> Path:
    """The full segment written before the current one."""
    return path.with_name(path.name + ".1")


class Spool:
    """Bounded output file pair of one execution, opened on the first byte."""

    def __init__(self, path: Path, quota: int) -> None:
        self.path = path
        self.quota = max(1, quota)  # bytes kept per segment
        self.total = 0  # bytes of output seen
        self._handle: BinaryIO | None = None
        self._segment = 0  # bytes in the current segment

    def write(self, data: bytes) -> None:
        """Append bytes (unbuffered: they survive the agent's death); older bytes roll off."""
        if len(data) >= self.quota:
            # nothing written before survives this write: start over with its last quota bytes
            self.total += len(data) - self.quota
            data = data[-self.quota :]
            self._start_segment(keep_previous=False)
        elif self._handle is None:
            self._start_segment(keep_previous=False)
        while data:
            room = self.quota - self._segment
            if room <= 0:
                self._start_segment(keep_previous=True)
                continue
            piece = data[:room]
            assert self._handle is not None
            self._handle.write(piece)
            self._segment += len(piece)
            self.total += len(piece)
            data = data[room:]

    def _start_segment(self, keep_previous: bool) -> None:
        """Begin a new current segment at offset `total`; the old one becomes the previous."""
        self.close()
        directory = self.path.parent
        directory.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        previous = previous_segment(self.path)
        if keep_previous and self.path.exists():
            os.replace(self.path, previous)
        else:
            _unlink(previous)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
        self._handle = os.fdopen(fd, "wb", buffering=0)
        self._handle.write(_HEADER.pack(MAGIC, self.total))
        self._segment = 0

    def close(self) -> None:
        """Close the current segment (it stays on disk)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def discard(self) -> None:
        """Close and delete the spool (its execution was reported)."""
        self.close()
        _unlink(self.path)
        _unlink(previous_segment(self.path))


def read_tail(path: Path, quota: int) -> tuple[bytes, int]:
    """(last `quota` bytes, bytes dropped before them) of a spool; (b"", 0) if there is none."""
    quota = max(0, quota)
    current = _read_segment(path, quota)
    previous = _read_segment(previous_segment(path), quota)
    if current is None and previous is None:
        return b"", 0
    if current is None:
        assert previous is not None
        end, data = previous[1], previous[2]
    elif previous is not None and previous[1] == current[0]:
        end, data = current[1], previous[2] + current[2]
    else:
        end, data = current[1], current[2]
    tail = data[max(0, len(data) - quota) :]
    return tail, end - len(tail)


def _read_segment(path: Path, quota: int) -> tuple[int, int, bytes] | None:
    """(start offset, end offset, last `quota` bytes) of one segment, or None if it is absent.

    A file without the header (an older agent's spool, found after an upgrade) starts at 0.
    Only the last `quota` bytes are read, however large the file.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEADER.size)
            size = handle.seek(0, os.SEEK_END)
            if len(head) == _HEADER.size and head[:4] == MAGIC:
                start, body = int(_HEADER.unpack(head)[1]), _HEADER.size
            else:
                start, body = 0, 0
            handle.seek(max(body, size - quota))
            data = handle.read(quota) if quota else b""
    except FileNotFoundError:
        return None
    return start, start + size - body, data


def _unlink(path: Path) -> None:
    """Remove a file if it exists."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
