"""Swap a directory in whole: build it under a new generation name, then repoint a symlink.

`dists/<channel>` and `yum/<channel>/repodata` are symlinks to `.<name>.<gen>` siblings. A new
generation is built completely (indexes, signatures, and the previous generation's
content-addressed files carried over), renamed into place, and the symlink replaced by rename.
A client resolving the link gets one generation or the other; one that fetched the old
InRelease/repomd.xml just before the swap still finds the hash-named files it lists, because
they are carried into the new generation, and stay for GRACE_SECONDS after the publish that
stopped listing them: a slow client that read an InRelease two quick publishes ago still finds
its indexes. Only the
current and the previous generation directories are kept.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from common.atomic import atomic_symlink, fsync_dir
from common.errors import LocalStateError


def _generation_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.(\d+)$")


def list_generations(parent: Path, name: str) -> list[int]:
    """Existing generation numbers of `name` under `parent`, oldest first."""
    pattern = _generation_pattern(name)
    if not parent.is_dir():
        return []
    found = [pattern.match(entry.name) for entry in parent.iterdir()]
    return sorted(int(m.group(1)) for m in found if m)


def current_generation(parent: Path, name: str) -> Path | None:
    """The generation directory the `name` symlink points at, if any."""
    link = parent / name
    if not link.is_symlink():
        if link.exists():
            raise LocalStateError(
                f"{link} is not a generation symlink", hint="move it away and publish again"
            )
        return None
    return parent / os.readlink(link)


def swap_generation(parent: Path, name: str, build: Callable[[Path], None]) -> Path:
    """Build a new generation with `build(dir)`, point `parent/name` at it, prune old ones."""
    parent.mkdir(parents=True, exist_ok=True)
    numbers = list_generations(parent, name)
    gen = (numbers[-1] + 1) if numbers else 1
    final = parent / f".{name}.{gen}"
    staging = parent / f".{name}.{gen}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        build(staging)
        advance_mtimes(staging, current_generation(parent, name))
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(parent)
    atomic_symlink(final.name, parent / name)
    prune_generations(parent, name, keep=2)
    return final


def advance_mtimes(new: Path, previous: Path | None) -> None:
    """Give files that replace ones of `previous` a later whole-second mtime.

    HTTP servers send Last-Modified with one-second resolution and apt asks If-Modified-Since:
    an InRelease rewritten within the second of the last fetch would be answered 304 and the
    client would keep the old view until the next publish.
    """
    if previous is None or not previous.is_dir():
        return
    for path in new.rglob("*"):
        old = previous / path.relative_to(new)
        if not path.is_file() or not old.is_file() or os.path.samefile(path, old):
            continue
        old_second = int(old.stat().st_mtime)
        if int(path.stat().st_mtime) <= old_second:
            os.utime(path, (old_second + 1, old_second + 1))


def prune_generations(parent: Path, name: str, keep: int) -> None:
    """Delete all but the newest `keep` generations (never the current one)."""
    current = current_generation(parent, name)
    for number in list_generations(parent, name)[:-keep]:
        path = parent / f".{name}.{number}"
        if current is not None and path.name == current.name:
            continue
        shutil.rmtree(path, ignore_errors=True)


GRACE_SECONDS = 3600  # hash-named index files stay this long after a publish stopped listing them


def young(path: Path) -> bool:
    """True for a file whose grace period (from its mtime) has not run out."""
    return time.time() - path.stat().st_mtime < GRACE_SECONDS


def carry_over(
    previous: Path | None,
    new: Path,
    listed: Callable[[Path], bool],
    hash_named: Callable[[Path], bool],
) -> None:
    """Hard-link into `new` the hash-named files of `previous` (same places) that a client may
    still ask for: those the previous index lists — no longer listed from this publish on, so
    their grace period starts now (mtime set) — and those still within GRACE_SECONDS of the
    publish that stopped listing them."""
    if previous is None or not previous.is_dir():
        return
    for source in previous.rglob("*"):
        if not source.is_file() or not hash_named(source):
            continue
        was_listed = listed(source)
        if not (was_listed or young(source)):
            continue
        dest = new / source.relative_to(previous)
        if dest.exists():  # the new generation lists it too
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(source, dest)
        if was_listed:
            os.utime(dest)


def link_or_copy(source: Path, dest: Path) -> None:
    """Hard-link `source` to `dest`, copying when links are impossible (other filesystem)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)  # keeps the mtime, which young() reads
    os.replace(tmp, dest)
