"""Download progress bars: tqdm on a terminal, nothing anywhere else."""

from __future__ import annotations

import shutil
import sys

from tqdm import tqdm


def progress_enabled(progress: bool | None) -> bool:
    """Resolve a progress setting: None means "only when stdout is a terminal"."""
    if progress is not None:
        return progress
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def open_progress(desc: str, total: int | None, initial: int, enabled: bool) -> tqdm:
    """A byte-counting bar on stderr; a disabled bar costs nothing and prints nothing."""
    size = shutil.get_terminal_size((80, 24))  # a pty may report 0x0, which silences tqdm
    return tqdm(
        desc=desc,
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        file=sys.stderr,
        leave=False,
        ncols=size.columns,
        nrows=size.lines,
    )
