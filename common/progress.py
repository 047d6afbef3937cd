"""Download progress bars: tqdm on a terminal, nothing anywhere else."""

from __future__ import annotations

import re
import shutil
import sys
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from types import TracebackType


class Progress(Protocol):
    """What a download needs of a bar (tqdm's names)."""

    def update(self, n: int) -> Any: ...

    def reset(self, total: int | None = None) -> Any: ...

    def __enter__(self) -> Any: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Any: ...


class _NoProgress:
    """The bar of a run without a terminal: costs nothing, and spares importing tqdm."""

    def update(self, n: int) -> None:
        """Count nothing."""

    def reset(self, total: int | None = None) -> None:
        """Forget nothing."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


def progress_enabled(progress: bool | None) -> bool:
    """Resolve a progress setting: None means "only when stdout is a terminal"."""
    if progress is not None:
        return progress
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


_HASHED = re.compile(r"^[0-9a-f]{64}\.")  # consistent-snapshot target names: <sha256>.<file>
LABEL_WIDTH = 28  # leaves the bar, percentage, size and rate room in 80 columns


def display_name(path: str) -> str:
    """What a bar calls a file: its own name, without a content-hash prefix, cut to fit."""
    name = _HASHED.sub("", path.rsplit("/", 1)[-1])
    if len(name) > LABEL_WIDTH:
        name = name[: LABEL_WIDTH - 1] + "…"
    return name


def _bar(desc: str, total: int | None, **options: Any) -> Progress:
    """A tqdm bar on stderr sized to the terminal."""
    from tqdm import tqdm

    size = shutil.get_terminal_size((80, 24))  # a pty may report 0x0, which silences tqdm
    bar: Progress = tqdm(
        desc=desc,
        total=total,
        file=sys.stderr,
        leave=False,
        ncols=size.columns,
        nrows=size.lines,
        **options,
    )
    return bar


def open_progress(desc: str, total: int | None, initial: int, enabled: bool) -> Progress:
    """A byte-counting tqdm bar on stderr when enabled; otherwise one that prints nothing."""
    if not enabled:
        return _NoProgress()
    return _bar(
        display_name(desc), total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024
    )


def open_steps(desc: str, total: int, unit: str, enabled: bool) -> Progress:
    """A bar counting whole steps (artifacts built, files synced) on stderr when enabled."""
    if not enabled:
        return _NoProgress()
    return _bar(desc, total, unit=f" {unit}")
