"""The version of the code that is running: the payload's VERSION file, else the project's."""

from __future__ import annotations

import functools
from pathlib import Path

import common


@functools.lru_cache(maxsize=1)
def agent_version() -> str:
    """Version stamped into the payload this code runs from (versions/V/VERSION)."""
    stamp = Path(common.__file__).resolve().parent.parent.parent / "VERSION"
    try:
        text = stamp.read_text(encoding="utf-8").strip()
    except OSError:
        return common.__version__
    return text or common.__version__
