"""Output spool: each running execution's output tail is kept under state/spool/, so an agent
that dies mid-task can still report what the task printed up to then (the tail within the quota,
and exactly how many bytes were dropped before it).

The spool is bounded (docs/agent-state.md, Spool): one file, a 16-byte header (magic, ring size,
bytes written so far) and a ring of twice the quota, where stream byte p lives at slot
p mod ring. Each piece written is at most the quota and the header is updated after it, so a
crash between the two only touches slots older than the tail the header promises. Writing
reuses the same file (a few pwrite calls per read from the task), so a chatty task is not slowed
down by its own spool. Files are 0600 in a 0700 directory.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

SPOOL_DIR = "spool"
MAGIC = b"ASP2"
_HEADER = struct.Struct(">4sIQ")  # magic, ring size (bytes), bytes written so far
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def spool_path(state_dir: Path, invoke_id: str, execution_id: str) -> Path:
    """Where one execution's output is spooled."""
    name = f"{invoke_id}-{execution_id}.out".replace(os.sep, "_")
    return state_dir / SPOOL_DIR / name


class Spool:
    """Ring-buffer output file of one execution, opened on the first byte."""

    def __init__(self, path: Path, quota: int) -> None:
        self.path = path
        self.quota = max(1, quota)  # bytes of tail that must survive a crash
        self.ring = 2 * self.quota  # bytes of ring on disk
        self.total = 0  # bytes of output seen
        self._fd: int | None = None
        self.failed = False  # the spool could not be written and was given up

    def write(self, data: bytes) -> None:
        """Append bytes (straight to the file: they survive the agent's death).

        A spool that cannot be written (disk full) is given up with one warning: the task runs
        on and its report still carries the tail kept in memory.
        """
        if not data or self.failed:
            return
        try:
            if self._fd is None:
                self._open()
            view = memoryview(data)
            for start in range(0, len(view), self.quota):
                self._put(view[start : start + self.quota])
        except OSError as exc:
            self.failed = True
            log.warning(
                "cannot spool task output to %s (%s); the report is kept in memory only",
                self.path,
                exc.strerror or exc,
            )

    def _open(self) -> None:
        """Create the spool file (0600, in a 0700 directory) with an empty ring."""
        self.path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
        self._fd = os.open(self.path, flags, PRIVATE_FILE)
        _pwrite(self._fd, _HEADER.pack(MAGIC, self.ring, 0), 0)

    def _put(self, piece: memoryview) -> None:
        """Write at most `quota` bytes into the ring, then publish them in the header."""
        assert self._fd is not None
        slot = self.total % self.ring
        first = piece[: self.ring - slot]
        _pwrite(self._fd, first, _HEADER.size + slot)
        if len(first) < len(piece):
            _pwrite(self._fd, piece[len(first) :], _HEADER.size)
        self.total += len(piece)
        _pwrite(self._fd, _HEADER.pack(MAGIC, self.ring, self.total), 0)

    def close(self) -> None:
        """Close the file (it stays on disk)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Close and delete the spool (its execution was reported)."""
        self.close()
        try:
            self.path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            pass


def _pwrite(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of `data` at `offset` (os.pwrite where it exists; seek + write on Windows)."""
    view = memoryview(data)
    while view:
        if hasattr(os, "pwrite"):
            done = os.pwrite(fd, view, offset)
        else:  # pragma: no cover - Windows: one writer per spool, so seek + write is safe
            os.lseek(fd, offset, os.SEEK_SET)
            done = os.write(fd, view)
        view, offset = view[done:], offset + done


def read_tail(path: Path, quota: int) -> tuple[bytes, int]:
    """(last `quota` bytes, bytes dropped before them) of a spool; (b"", 0) if there is none.

    A file without the header (an older agent's plain spool, found after an upgrade) is read
    from its end only, however large it is.
    """
    quota = max(0, quota)
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEADER.size)
            if len(head) == _HEADER.size and head[:4] == MAGIC:
                _, ring, total = _HEADER.unpack(head)
                return _read_ring(handle, ring, total, quota)
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - quota)
            handle.seek(start)
            return handle.read(quota), start
    except (FileNotFoundError, NotADirectoryError):
        return b"", 0


def _read_ring(handle: BinaryIO, ring: int, total: int, quota: int) -> tuple[bytes, int]:
    """The last min(quota, ring / 2, total) bytes of a ring spool and the count before them."""
    keep = min(quota, ring // 2, total)
    first = total - keep
    out = bytearray()
    while len(out) < keep:
        slot = (first + len(out)) % ring
        handle.seek(_HEADER.size + slot)
        piece = handle.read(min(keep - len(out), ring - slot))
        if not piece:
            break  # a truncated file: report what is there
        out += piece
    return bytes(out), total - len(out)
