"""Durable sync state under a file lock (bandersnatch-style).

ROOT/.mirror/ holds everything that is not served:
    lock          flock'ed by a running sync / prune / import
    state.json    what was published last (files with hashes, versions, expiry, last sync)
    tuf/          the mirror's trusted TUF metadata (it is a TUF client of its upstream)
    staging/      verified downloads and partial downloads (*.part) not yet published
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.atomic import atomic_write_json
from common.errors import LocalStateError, LockedError

STATE_DIR = ".mirror"


@dataclass
class MirrorState:
    """What the last successful sync published."""

    upstream: str = ""
    region: str = ""
    public_url: str = ""
    filters: str = ""  # Filters.fingerprint()
    filter_spec: dict[str, Any] = field(default_factory=dict)  # Filters.to_dict(): for export
    last_sync: str = ""  # ISO 8601 UTC of the last completed sync
    timestamp_version: int = 0
    snapshot_version: int = 0
    targets_version: int = 0
    root_version: int = 0
    expires: dict[str, str] = field(default_factory=dict)  # role -> ISO 8601
    files: dict[str, list[Any]] = field(default_factory=dict)  # relpath -> [sha256, length]
    dests: list[str] = field(default_factory=list)  # extra backends holding this version
    publishing: bool = False  # set while a publish runs: a kill then forces a full next sync
    pending_remove: list[str] = field(default_factory=list)  # removals a killed publish owes


def state_dir(root: Path) -> Path:
    return root / STATE_DIR


def require_mirror(root: Path) -> None:
    """Refuse (creating nothing) a --root that holds no mirror at all."""
    if not (state_dir(root) / "state.json").is_file():
        raise LocalStateError(
            f"{root} holds no mirror (no {STATE_DIR}/state.json)",
            hint="check --root, or run assist-mirror sync first",
        )


def load_state(root: Path) -> MirrorState:
    """The recorded state, or an empty one for a new mirror."""
    path = state_dir(root) / "state.json"
    if not path.exists():
        return MirrorState()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = set(MirrorState.__dataclass_fields__)
        return MirrorState(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError) as exc:
        raise LocalStateError(
            f"cannot read {path}: {exc}", hint="remove it and run a full sync"
        ) from exc


def save_state(root: Path, state: MirrorState) -> None:
    """Record `state` atomically."""
    atomic_write_json(state_dir(root) / "state.json", asdict(state))


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the mirror's lock for the block; another holder makes this fail at once."""
    directory = state_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LockedError(
                f"another sync holds the lock on {root}",
                hint="wait for it to finish; the lock is released when that process exits",
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)
