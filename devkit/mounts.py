"""Real read-only filesystems for tests (mount needs root; without it the test is skipped)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def read_only_mount(target: Path, *how: str) -> Iterator[Path]:
    """`mount HOW… TARGET` for the `with` block (e.g. `-t tmpfs -o ro,size=1m tmpfs`, or
    `--bind -o ro TARGET`), unmounted after; the test is skipped when it cannot mount."""
    target.mkdir(exist_ok=True)
    proc = subprocess.run(["mount", *how, str(target)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount {target} read-only here: {proc.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=False)
