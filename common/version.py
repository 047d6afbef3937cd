"""The running code's version (the payload's VERSION file, else the project's), and version order."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import common

if TYPE_CHECKING:
    from packaging.version import Version


@functools.lru_cache(maxsize=1)
def agent_version() -> str:
    """Version stamped into the payload this code runs from (versions/V/VERSION)."""
    stamp = Path(common.__file__).resolve().parent.parent.parent / "VERSION"
    try:
        text = stamp.read_text(encoding="utf-8").strip()
    except OSError:
        return common.__version__
    return text or common.__version__


def version_sort_key(version: str) -> tuple[int, Version | str]:
    """packaging.version order; unparseable versions sort before all others, by text."""
    # imported here: agent_version() must work without site-packages (python -S in the payload)
    from packaging.version import InvalidVersion, Version

    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)
