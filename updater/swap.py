"""The atomic swap of `current` (and `previous`): one rename of a temp symlink.

POSIX: `current -> versions/V` relative symlink replaced by rename. Windows (no unprivileged
symlinks): `current.txt` holding V, replaced with os.replace. A leftover temp link from a crash in
the middle of a swap is removed by recovery; `current` itself is always whole (old or new).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from common.atomic import atomic_write_text, fsync_dir, sync_filesystem
from common.layout import Layout, is_swap_temp, swap_temp_name
from updater.journal import crash_point

log = logging.getLogger(__name__)

_USE_POINTER_FILE = os.name == "nt"
SWAP_MIDWAY = "swap_midway"  # crash-hook name: temp link made, not yet renamed


def read_pointer(layout: Layout, name: str = "current") -> str | None:
    """The version `current` (or `previous`) points at, or None."""
    link = layout.prefix / name
    if _USE_POINTER_FILE:
        try:
            return (layout.prefix / f"{name}.txt").read_text(encoding="utf-8").strip() or None
        except OSError:
            return None
    try:
        target = os.readlink(link)
    except OSError:
        return None
    parts = Path(target).parts
    return parts[-1] if parts else None


def point(layout: Layout, name: str, version: str) -> None:
    """Make `name` (current/previous) point at versions/V atomically."""
    if _USE_POINTER_FILE:
        atomic_write_text(layout.prefix / f"{name}.txt", version + "\n")
        return
    link = layout.prefix / name
    tmp = layout.prefix / swap_temp_name(name, os.getpid())
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(f"versions/{version}", tmp)
    if name == "current":
        crash_point(SWAP_MIDWAY)
    os.replace(tmp, link)
    fsync_dir(layout.prefix)


def swap_current(layout: Layout, version: str) -> str | None:
    """Point current at `version` and previous at the old current; returns the old version.

    The new tree is flushed to disk first, so `current` never survives a power cut pointing
    at files whose content did not."""
    sync_filesystem(layout.versions_dir / version)
    old = read_pointer(layout, "current")
    if old and old != version:
        point(layout, "previous", old)
    point(layout, "current", version)
    log.info("current: %s -> %s", old, version)
    return old


def clean_temp_links(layout: Layout) -> list[str]:
    """Remove temp links left by a swap that was killed before its rename."""
    removed: list[str] = []
    if not layout.prefix.is_dir():
        return removed
    for entry in layout.prefix.iterdir():
        if is_swap_temp(entry.name):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
            removed.append(entry.name)
    return removed
