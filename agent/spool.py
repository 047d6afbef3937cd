"""Output spool: every running execution's output is appended to state/spool/, so an agent that
dies mid-task can still report what the task printed up to then (the tail within the quota)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

SPOOL_DIR = "spool"


def spool_path(state_dir: Path, invoke_id: str, execution_id: str) -> Path:
    """Where one execution's output is spooled."""
    name = f"{invoke_id}-{execution_id}.out".replace(os.sep, "_")
    return state_dir / SPOOL_DIR / name


class Spool:
    """Append-only output file of one execution, opened on the first byte."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: BinaryIO | None = None

    def write(self, data: bytes) -> None:
        """Append bytes (unbuffered: they survive the agent's death)."""
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "ab", buffering=0)  # noqa: SIM115 - closed in discard
        self._handle.write(data)

    def discard(self) -> None:
        """Close and delete the spool (its execution was reported)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def read_tail(path: Path, quota: int) -> tuple[bytes, int]:
    """(last `quota` bytes, bytes dropped before them) of a spool; (b"", 0) if there is none."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - quota)
            handle.seek(start)
            return handle.read(), start
    except FileNotFoundError:
        return b"", 0
