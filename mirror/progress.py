"""One overall progress bar for a sync: files and bytes, on a terminal only (tqdm)."""

from __future__ import annotations

import shutil
import sys
import threading
from typing import Any

from common.progress import progress_enabled


class SyncProgress:
    """Bytes and files of every download of one sync; prints nothing when disabled."""

    def __init__(self, progress: bool | None) -> None:
        self.files = 0
        self.done = 0
        self._lock = threading.Lock()
        self._bar: Any = None
        if progress_enabled(progress):
            from tqdm import tqdm

            size = shutil.get_terminal_size((80, 24))  # a pty may report 0x0
            self._bar = tqdm(
                desc="sync",
                total=0,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                ncols=size.columns,
                nrows=size.lines,
            )

    def add(self, files: int, nbytes: int) -> None:
        """More work was planned: grow the totals."""
        with self._lock:
            self.files += files
            if self._bar is not None:
                self._bar.total = (self._bar.total or 0) + nbytes
                self._bar.set_postfix_str(f"{self.done}/{self.files} files", refresh=True)

    def finished(self, nbytes: int) -> None:
        """One file is downloaded and verified."""
        with self._lock:
            self.done += 1
            if self._bar is not None:
                self._bar.set_postfix_str(f"{self.done}/{self.files} files", refresh=False)
                self._bar.update(nbytes)

    def close(self) -> None:
        """Leave the final line on the terminal."""
        if self._bar is not None:
            self._bar.close()
